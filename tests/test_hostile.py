"""A participant that follows the protocol badly on purpose: it cannot stop the run, take another client's place,
or fill the server's memory and log. Real in-process gRPC servers; time moves on a manual clock where a
deadline matters, so nothing here waits for one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
import torch
from inprocess import RawClient, running_server
from recording_sink import Recorder

from fedtl.common import tensorcodec
from fedtl.common.config import PROTOCOL
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc
from fedtl.server.clock import ManualClock
from fedtl.server.events import ClientsAdded, RoundClosed, RoundOpened


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _zero_update(blob: bytearray) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in tensorcodec.decode(blob).tensors.items()}


async def _joined(port: int, names: list[str], **hello: object) -> list[RawClient]:
    clients = [RawClient(port, n) for n in names]
    for c in clients:
        await c.connect(**hello)
    return clients


def test_stalled_uploads_lose_their_slots_and_the_round_goes_on(tmp_path: Path) -> None:
    """4 selected fakes send a header and then nothing, holding all 4 staging slots; 4 real clients still finish the round."""
    recorder, clock = Recorder(), ManualClock()

    async def scenario() -> None:
        args = ["--min-clients", "8", "--min-fit-clients", "4", "--rounds", "1", "--stall-timeout", "5", "--max-concurrent-uploads", "4",
                "--round-timeout", "600"]
        async with running_server(tmp_path, args, clock=clock, sinks=[recorder]) as (coordinator, port):
            clients = await _joined(port, [f"c{i}" for i in range(8)])
            tasks = [(await c.next_instruction()).train for c in clients]
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            stalled = [c.upload_stalling(c.update_messages(t, update, 10)[:1]) for c, t in zip(clients[:4], tasks[:4])]
            while len(coordinator.round.phase.in_flight) < 4:  # the four hold the staging slots (polled: no event for it)
                await asyncio.sleep(0.01)
            real = [asyncio.ensure_future(c.upload_raw(c.update_messages(t, update, 10))) for c, t in zip(clients[4:], tasks[4:])]
            await asyncio.sleep(0.2)
            assert not any(r.done() for r in real), "the real uploads wait for a slot: the attack works until the deadline"
            clock.advance(6)  # the stall deadline passes
            receipts = await asyncio.gather(*real)
            assert all(r.accepted for r in receipts)
            for task in stalled:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await task
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--stall-timeout" in info.value.details()
            record = (await recorder.wait_for(RoundClosed)).record
            assert record.answered == 4 and record.clients == ["c4", "c5", "c6", "c7"] and record.rejected == {"stalled": 4}
            assert record.close_reason == "clients_gone"  # everyone answered or is out: no wait for the 600 s deadline
            for c in clients:
                await c.close()

    run(scenario())


def test_a_download_that_is_never_read_loses_its_slot(tmp_path: Path) -> None:
    """Sessions that never read their download hold the download slots until the stall deadline, then lose them."""
    clock = ManualClock()

    async def scenario() -> None:
        args = ["--model", "resnet18", "--min-clients", "3", "--rounds", "1", "--stall-timeout", "5",
                "--max-concurrent-downloads", "2", "--min-transfer-rate", "0"]
        async with running_server(tmp_path, args, clock=clock) as (coordinator, port):
            clients = await _joined(port, ["a", "b", "c"])
            tasks = [(await c.next_instruction()).train for c in clients]
            stuck = []
            for c, t in zip(clients[:2], tasks[:2]):
                stream = c.stub.DownloadModel(pb.DownloadRequest(session_id=c.session_id, sha256=t.base_digest), metadata=c.metadata)
                await stream.read()  # the manifest, then never another read: the server's writes back up
                stuck.append(stream)
            honest = asyncio.ensure_future(clients[2].download(tasks[2].base_digest))
            await asyncio.sleep(0.5)
            assert not honest.done(), "both download slots are held"
            clock.advance(6)
            blob = await asyncio.wait_for(honest, 30)
            assert len(blob) > 40_000_000
            for stream in stuck:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    while True:
                        await stream.read()
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for c in clients:
                await c.close()

    run(scenario())


def test_garbage_gets_a_client_out_of_the_round_and_over_selection_replaces_it(tmp_path: Path) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        args = ["--min-clients", "4", "--clients-per-round", "2", "--over-select", "0.5", "--rounds", "1", "--seed", "3"]
        async with running_server(tmp_path, args, sinks=[recorder]) as (coordinator, port):
            clients = {c.name: c for c in await _joined(port, ["a", "b", "c", "d"])}
            opened = await recorder.wait_for(RoundOpened)
            assert len(opened.selected) == 3 and opened.target == 2
            tasks = {n: (await clients[n].next_instruction()).train for n in opened.selected}
            first, *others = opened.selected
            update = _zero_update(await clients[first].download(tasks[first].base_digest))
            nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in update.items()}
            for name in (first, others[0]):  # two garbage updates: only one selected client is left, target is 2
                with pytest.raises(grpc.RpcError):
                    await clients[name].upload_raw(clients[name].update_messages(tasks[name], nan, 10))
            added = await recorder.wait_for(ClientsAdded)
            (spare,) = set(clients) - set(opened.selected)
            assert added.clients == (spare,)
            tasks[spare] = (await clients[spare].next_instruction()).train
            for name in (others[1], spare):
                assert (await clients[name].upload_raw(clients[name].update_messages(tasks[name], update, 10))).accepted
            record = (await recorder.wait_for(RoundClosed)).record
            assert sorted(record.clients) == sorted([others[1], spare]) and record.rejected == {"non_finite": 2}
            for c in clients.values():
                await c.close()

    run(scenario())


def test_a_refused_update_does_not_fail_a_round_that_still_has_its_quorum(tmp_path: Path) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "4", "--rounds", "1", "--seed", "3"], sinks=[recorder]) as (_, port):
            clients = {c.name: c for c in await _joined(port, ["a", "b", "c", "d"])}
            opened = await recorder.wait_for(RoundOpened)
            assert len(opened.selected) == 4
            tasks = {n: (await clients[n].next_instruction()).train for n in opened.selected}
            update = _zero_update(await clients["a"].download(tasks["a"].base_digest))
            bad = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in update.items()}
            with pytest.raises(grpc.RpcError):  # refused: "a" is out of the round; three of four remain, the default quorum
                await clients["a"].upload_raw(clients["a"].update_messages(tasks["a"], bad, 10))
            for name in ("b", "c", "d"):
                assert (await clients[name].upload_raw(clients[name].update_messages(tasks[name], update, 10))).accepted
            record = (await recorder.wait_for(RoundClosed)).record
            assert sorted(record.clients) == ["b", "c", "d"] and record.rejected == {"non_finite": 1}
            assert record.close_reason == "clients_gone"  # closed at once, not failed and retried
            for c in clients.values():
                await c.close()

    run(scenario())


def test_sessions_and_joins_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        args = ["--min-clients", "9", "--max-clients", "3", "--join-rate", "1"]  # 1 join/s from one address, bursts of 5
        async with running_server(tmp_path, args) as (coordinator, port):
            joined = await _joined(port, ["a", "b", "c"])
            extra = RawClient(port, "d")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await extra.connect()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-clients" in info.value.details()
            codes = []
            for i in range(4):  # a, b, c, d used 4 of the 5-join burst; then the rate limit holds
                again = RawClient(port, f"x{i}")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await again.connect()
                codes.append((info.value.code(), "--join-rate" in info.value.details()))
                await again.close()
            assert codes[-1] == (grpc.StatusCode.RESOURCE_EXHAUSTED, True)
            assert len(coordinator.registry) == 3
            for c in [*joined, extra]:
                await c.close()

    run(scenario())


def test_a_live_clients_name_cannot_be_taken_without_its_identity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2"]) as (coordinator, port):
            (victim,) = await _joined(port, ["hospital-a"], identity="a" * 64)
            thief = RawClient(port, "hospital-a")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await thief.connect(identity="b" * 64)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "belongs to another client" in info.value.details()
            assert coordinator.intake.refusals.get("join_refused") == 1, "the operator sees the refusal too (the round log counts it)"
            with pytest.raises(grpc.aio.AioRpcError):
                await RawClient(port, "hospital-a").connect()  # no identity at all
            assert coordinator.registry.by_name("hospital-a").session_id == victim.session_id  # the victim keeps its session
            restarted = RawClient(port, "hospital-a")
            await restarted.connect(identity="a" * 64)  # the same client, restarted: takes its own place back
            assert coordinator.registry.by_name("hospital-a").session_id == restarted.session_id
            for c in (victim, thief, restarted):
                await c.close()

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert "refused join from client hospital-a: the name 'hospital-a' belongs to another client" in caplog.text


def test_a_client_cannot_claim_a_shard_it_was_not_given(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--num-partitions", "2"]) as (_, port):
            for claim in ({"partition_index": 1, "partition_count": 2}, {"partition_index": 7, "partition_count": 2}):
                greedy = RawClient(port, "greedy")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await greedy.connect(**claim)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "assigns shards" in info.value.details()
                await greedy.close()

    run(scenario())


def test_a_restarted_client_keeps_its_shard_when_a_newcomer_joins() -> None:
    from fedtl.common.config import Hello
    from fedtl.common.errors import FederationRefused
    from fedtl.server.config import PartitionPlan
    from fedtl.server.registry import Registry

    registry = Registry(PartitionPlan(0, "iid", 0.5, 2, 0, 0.0, 0))
    sessions = {n: registry.connect(Hello(n, identity=n * 8), now=0.0)[0] for n in ("a", "b")}
    assert registry.fix_partitions() == {"a": 0, "b": 1}
    registry.disconnect(sessions["a"])  # a restarts...
    newcomer = registry.connect(Hello("c", identity="c" * 8), now=1.0)[0]
    with pytest.raises(FederationRefused, match="belong to this run's clients"):
        registry.assignment(newcomer.name)  # ...and its shard is not up for grabs
    registry.connect(Hello("a", identity="a" * 8), now=2.0)
    assert registry.assignment("a").partition_index == 0


def test_strings_from_the_wire_are_capped_and_escaped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2"]) as (coordinator, port):
            big = RawClient(port, "big")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await big.connect(info=pb.ClientInfo(hostname="h" * 4_000_000))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hostname is 4000000 characters" in info.value.details()
            forger = RawClient(port, "forger")
            await forger.connect(info=pb.ClientInfo(hostname="x\n03:00:00.000 ERROR   server: the run was hacked"))
            for c in (big, forger):
                await c.close()

    with caplog.at_level(logging.INFO):
        run(scenario())
    joined = [r.getMessage() for r in caplog.records if "client forger connected" in r.getMessage()]
    assert joined and "\n" not in joined[0] and "\\n03:00:00.000 ERROR" in joined[0]


def test_refusals_are_counted_not_logged_one_by_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fedtl.server.auth import Authenticator

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2"], auth=Authenticator(shared="s" * 20)) as (coordinator, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.FederationStub(channel)
                for _ in range(300):
                    with pytest.raises(grpc.aio.AioRpcError):
                        async for _m in stub.Connect(pb.Hello(protocol=PROTOCOL, client_name="anon")):
                            pass
            assert coordinator.intake.refusals == {"unauthenticated": 300}

    with caplog.at_level(logging.WARNING):
        run(scenario())
    from fedtl.server.sinks.console import REFUSAL_LINES

    lines = [r for r in caplog.records if "refused call" in r.getMessage()]
    assert 1 <= len(lines) <= REFUSAL_LINES, len(lines)  # 300 refusals, a handful of lines; the round record counts them all


def test_the_protocol_version_is_discoverable_from_the_proto() -> None:
    from fedtl.common.config import PROTOCOL

    assert pb.DESCRIPTOR.GetOptions().Extensions[pb.protocol_version] == PROTOCOL


def test_an_upload_at_shutdown_is_told_to_come_back_not_an_unknown_error() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fedtl.common.errors import ServerStopping
    from fedtl.server.config import Limits
    from fedtl.server.events import EventBus
    from fedtl.server.intake import UpdateIntake

    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    intake = UpdateIntake(pool, pool, Limits(0, 0, 0, 0, 1, 1, 30, 0, 1 << 20), EventBus(ManualClock()), ManualClock())

    async def submit() -> None:
        intake._run(pool, print)

    with pytest.raises(ServerStopping, match="stopping"):
        run(submit())


def test_min_clients_holds_at_the_moment_a_round_starts(tmp_path: Path) -> None:
    """A client that leaves during the join grace does not let round 1 start one short."""
    recorder, clock = Recorder(), ManualClock()

    async def scenario() -> None:
        args = ["--min-clients", "2", "--rounds", "1", "--join-grace", "5"]
        async with running_server(tmp_path, args, clock=clock, sinks=[recorder]) as (coordinator, port):
            a, b = await _joined(port, ["a", "b"])
            await b.close()
            while len(coordinator.registry) > 1:
                await asyncio.sleep(0.01)
            clock.advance(6)
            await asyncio.sleep(0.2)
            assert not recorder.of(RoundOpened), "round 1 started with 1 of the 2 clients needed"
            (c,) = await _joined(port, ["c"])
            clock.advance(6)
            opened = await recorder.wait_for(RoundOpened)
            assert opened.selected == ("a", "c")
            for client in (a, c):
                await client.close()

    run(scenario())


def test_a_fuzzer_with_a_valid_session_gets_precise_statuses_and_changes_nothing(tmp_path: Path) -> None:
    """Mutated uploads from a joined, selected client: every answer is a deliberate status, never INTERNAL or UNKNOWN."""
    import random

    deliberate = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS,
                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
    rng = random.Random(0)

    async def scenario() -> None:
        args = ["--min-clients", "2", "--min-fit-clients", "1", "--rounds", "1", "--round-timeout", "600"]
        async with running_server(tmp_path, args) as (coordinator, port):
            clients = await _joined(port, ["a", "b"])
            tasks = [(await c.next_instruction()).train for c in clients]
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            good = clients[0].update_messages(tasks[0], update, 10)
            seen = set()
            for trial in range(40):
                messages = [m if isinstance(m, bytes) else m.SerializeToString() for m in good]
                index = rng.randrange(len(messages))
                raw = bytearray(messages[index])
                for _ in range(rng.randint(1, 4)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
                messages[index] = bytes(raw)
                if rng.random() < 0.3:
                    messages = messages[: rng.randint(0, len(messages))]
                try:
                    await clients[0].upload_raw(messages)
                    seen.add("accepted")
                except grpc.RpcError as exc:
                    assert exc.code() in deliberate, (trial, exc.code(), exc.details())
                    seen.add(exc.code().name)
                if coordinator.round is None or "a" in coordinator.round.phase.refused:
                    break  # out of the round after its first bad update: later ones are refused as such
            rnd = coordinator.round
            assert rnd is not None and rnd.aggregator.count == len(rnd.train.answered)
            for c in clients:
                await c.close()

    run(scenario())
