"""The protocol spoken by hand against a real in-process server: status codes, and nothing bad reaches the aggregate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import torch
from inprocess import RawClient, running_server
from recording_sink import Recorder

from fedtl.common import tensorcodec
from fedtl.protos import federation_pb2 as pb
from fedtl.server.auth import Authenticator
from fedtl.server.events import ClientLeft, RoundClosed


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _round_one(port: int, names: list[str]) -> tuple[list[RawClient], list[pb.TrainTask]]:
    clients = [RawClient(port, n) for n in names]
    for c in clients:
        await c.connect()
    tasks = [(await c.next_instruction()).train for c in clients]
    return clients, tasks


def _zero_update(blob: bytearray) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in tensorcodec.decode(blob).tensors.items()}


def test_a_good_update_is_accepted_and_folded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "1"]) as (coordinator, port):
            clients, tasks = await _round_one(port, ["a", "b"])
            global_blob = await clients[0].download(tasks[0].base_digest)
            receipt = await clients[0].upload_raw(clients[0].update_messages(tasks[0], _zero_update(global_blob), 7))
            assert receipt.accepted and "7 examples" in receipt.detail
            assert coordinator.round is not None and coordinator.round.train.answered == {"a": 7}
            with pytest.raises(grpc.RpcError) as info:  # the same client again
                await clients[0].upload_raw(clients[0].update_messages(tasks[0], _zero_update(global_blob), 7))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already sent" in info.value.details()
            for c in clients:
                await c.close()

    run(scenario())


@pytest.mark.parametrize(
    "mutate, code, text",
    [
        (lambda c, t, u: c.update_messages(t, {**u, "extra": torch.zeros(1)}), grpc.StatusCode.INVALID_ARGUMENT, "unexpected"),
        (lambda c, t, u: c.update_messages(t, {k: v.double() for k, v in u.items()}), grpc.StatusCode.INVALID_ARGUMENT, "expected"),
        (lambda c, t, u: c.update_messages(t, {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in u.items()}),
         grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (lambda c, t, u: c.update_messages(t, u, round=t.round + 5), grpc.StatusCode.FAILED_PRECONDITION, "round"),
        (lambda c, t, u: c.update_messages(t, u, base_digest="0" * 64), grpc.StatusCode.FAILED_PRECONDITION, "computed from"),
        (lambda c, t, u: c.update_messages(t, u, sha256="1" * 64), grpc.StatusCode.DATA_LOSS, "hash"),
        (lambda c, t, u: c.update_messages(t, u, total_bytes=1 << 34), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most"),
        (lambda c, t, u: c.update_messages(t, u)[:-1], grpc.StatusCode.DATA_LOSS, "ended after"),
        (lambda c, t, u: c.update_messages(t, u)[1:], grpc.StatusCode.INVALID_ARGUMENT, "must start"),
        (lambda c, t, u: c.update_messages(t, u, session_id="nope"), grpc.StatusCode.ABORTED, "reconnect"),
        (lambda c, t, u: c.update_messages(t, u, num_examples=0), grpc.StatusCode.INVALID_ARGUMENT, "num_examples"),
    ],
)
def test_bad_updates_get_precise_statuses_and_change_nothing(tmp_path: Path, mutate, code, text) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()

    async def scenario() -> None:
        args = ["--min-clients", "3", "--min-fit-clients", "2", "--rounds", "1"]
        async with running_server(tmp_path, args, sinks=[recorder]) as (coordinator, port):
            clients, tasks = await _round_one(port, ["a", "b", "c"])
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            with pytest.raises(grpc.RpcError) as info:
                await clients[0].upload_raw(mutate(clients[0], tasks[0], update))
            assert info.value.code() == code, info.value.details()
            assert text in info.value.details()
            rnd = coordinator.round
            assert rnd is not None and rnd.train.answered == {} and rnd.aggregator.count == 0
            assert sum(coordinator.intake.refusals.values()) == 1
            # a broken-off stream (a client killed mid-upload) says nothing against the client; neither does lateness
            at_fault = code not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED) and text not in ("must start", "ended after")
            if at_fault:  # a client that sent something no honest client sends is out of the round, which does not wait for it
                with pytest.raises(grpc.RpcError) as info:
                    await clients[0].upload_raw(clients[0].update_messages(tasks[0], update, 5))
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "refused" in info.value.details()
            else:  # late, unknown, cut off, or malformed before it said who it is: nothing against the client, it may still send
                assert (await clients[0].upload_raw(clients[0].update_messages(tasks[0], update, 5))).accepted
            for c, t in zip(clients[1:], tasks[1:]):  # the others close the round; nothing bad reached the aggregate
                assert (await c.upload_raw(c.update_messages(t, update, 5))).accepted
            record = (await recorder.wait_for(RoundClosed)).record
            assert record.answered == (2 if at_fault else 3) and record.clients == (["b", "c"] if at_fault else ["a", "b", "c"])
            for c in clients:
                await c.close()

    run(scenario())


def test_tokens_are_checked_before_anything_happens(tmp_path: Path) -> None:
    auth = Authenticator(shared=None, per_client={"alice": "a" * 20, "bob": "b" * 20})

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "1"], auth=auth) as (coordinator, port):
            for metadata, expect in [
                ([("x-fedtl-client", "alice")], "requires a token"),
                ([("x-fedtl-client", "alice"), ("authorization", "Bearer " + "b" * 20)], "wrong token"),
                ([("x-fedtl-client", "alice"), ("authorization", "Basic xyz")], "malformed"),
            ]:
                client = RawClient(port, "alice", metadata)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.connect()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and expect in info.value.details()
                await client.close()
            # bob's valid token does not let him act as alice
            impostor = RawClient(port, "alice", [("x-fedtl-client", "bob"), ("authorization", "Bearer " + "b" * 20)])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await impostor.connect()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await impostor.close()
            assert len(coordinator.registry) == 0
            good = RawClient(port, "alice", [("x-fedtl-client", "alice"), ("authorization", "Bearer " + "a" * 20)])
            assert (await good.connect()).welcome.session_id
            await good.close()

    run(scenario())


def test_wrong_protocol_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2"]) as (_, port):
            old = RawClient(port, "old")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await old.connect(protocol="fedtl.v0")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "protocol" in info.value.details()
            await old.close()
            c = RawClient(port, "c")
            await c.connect()
            with pytest.raises(grpc.aio.AioRpcError) as info:  # not selected (no round yet): no download slot at all
                await c.download("f" * 64)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no open task" in info.value.details()
            d = RawClient(port, "d")
            await d.connect()
            await c.next_instruction()  # round 1: c is selected now
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.download("f" * 64)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            for client in (c, d):
                await client.close()

    run(scenario())


def test_health_service_answers_without_a_token(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def scenario() -> None:
        async with running_server(tmp_path, auth=Authenticator(shared="s" * 20)) as (_, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="fedtl.v1.Federation"))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run(scenario())


def test_malformed_protobuf_gets_invalid_argument_not_internal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2"]) as (coordinator, port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                connect = channel.unary_stream("/fedtl.v1.Federation/Connect")  # raw bytes in, raw bytes out
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in connect(b"\xff\xff\xff\x0f garbage"):
                        pass
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed Hello" in info.value.details()
            assert len(coordinator.registry) == 0

    run(scenario())


def test_reordered_or_overlong_chunk_streams_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        args = ["--min-clients", "4", "--min-fit-clients", "1", "--rounds", "1"]
        async with running_server(tmp_path, args) as (coordinator, port):
            clients, tasks = await _round_one(port, ["a", "b", "c", "d"])
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            update = {k: torch.randn(v.shape).to(v.dtype) if v.is_floating_point() else v for k, v in update.items()}
            sent = [c.update_messages(t, update) for c, t in zip(clients, tasks)]
            assert len(sent[0]) > 4
            swapped = [sent[0][0], sent[0][2], sent[0][1], *sent[0][3:]]  # same bytes, wrong order
            with pytest.raises(grpc.RpcError) as info:
                await clients[0].upload_raw(swapped)
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            longer = [*sent[1], pb.UploadMessage(data=b"\0" * 64)]  # more than the manifest announced
            with pytest.raises(grpc.RpcError) as info:
                await clients[1].upload_raw(longer)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            two_headers = [sent[2][0], sent[2][1], sent[2][0], *sent[2][2:]]
            with pytest.raises(grpc.RpcError) as info:
                await clients[2].upload_raw(two_headers)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "second header" in info.value.details()
            rnd = coordinator.round
            assert rnd is not None and rnd.aggregator.count == 0 and rnd.phase.refused == {"a", "b", "c"}
            assert coordinator.intake.refusals == {"digest_mismatch": 1, "oversize": 1, "corrupt": 1}
            for c in clients:
                await c.close()

    run(scenario())


def test_a_late_update_for_a_closed_round_is_not_mixed_into_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "3", "--round-timeout", "30"]) as (coordinator, port):
            clients, tasks = await _round_one(port, ["a", "b"])
            updates = [_zero_update(await c.download(t.base_digest)) for c, t in zip(clients, tasks)]
            for c, t, u in zip(clients, tasks, updates):
                await c.upload_raw(c.update_messages(t, u, 4))
            second = (await clients[0].next_instruction()).train
            assert second.round == 2
            with pytest.raises(grpc.RpcError) as info:  # round 1's update again, now that round 2 is open
                await clients[0].upload_raw(clients[0].update_messages(tasks[0], updates[0], 4))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "round 2 is open" in info.value.details()
            rnd = coordinator.round
            assert rnd is not None and rnd.number == 2 and rnd.aggregator.count == 0
            for c in clients:
                await c.close()

    run(scenario())


def test_max_update_norm_bounds_what_one_client_can_do(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "1", "--max-update-norm", "2.0"]) as (coordinator, port):
            clients, tasks = await _round_one(port, ["a", "b"])
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            huge = {k: torch.full_like(v, 1000.0) if v.is_floating_point() else v for k, v in update.items()}
            assert (await clients[0].upload_raw(clients[0].update_messages(tasks[0], huge, 10))).accepted
            rnd = coordinator.round
            assert rnd is not None and rnd.aggregator.stats() == {"clipped": 1}
            mean = rnd.aggregator.result().tensors
            params = coordinator.model.parameters
            norm = sum(float(mean[n].norm()) ** 2 for n in params) ** 0.5
            assert norm == pytest.approx(2.0, rel=1e-6)  # scaled down to the bound, direction kept
            for c in clients:
                await c.close()

    run(scenario())


def test_a_client_says_why_it_leaves_and_only_for_its_own_session(tmp_path: Path) -> None:
    """Leave: the round stops waiting for the client at once and the event carries its reason; an overlong reason, another
    client's session or an unknown one are refused and disconnect nobody."""
    auth = Authenticator(shared=None, per_client={"alice": "a" * 20, "bob": "b" * 20})
    recorder = Recorder()

    def as_(name: str) -> list[tuple[str, str]]:
        return [("x-fedtl-client", name), ("authorization", "Bearer " + name[0] * 20)]

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "1"], auth=auth, sinks=[recorder]) as (coordinator, port):
            alice, bob = RawClient(port, "alice", as_("alice")), RawClient(port, "bob", as_("bob"))
            for c in (alice, bob):
                await c.connect()
            for c in (alice, bob):
                await c.next_instruction()  # the round's task: both are awaited
            refused = [
                (bob, pb.Goodbye(session_id=alice.session_id, reason="bob says alice quits"), grpc.StatusCode.UNAUTHENTICATED),
                (alice, pb.Goodbye(session_id=alice.session_id, reason="x" * 301), grpc.StatusCode.INVALID_ARGUMENT),
                (alice, pb.Goodbye(session_id="f" * 32, reason="who?"), grpc.StatusCode.ABORTED),
            ]
            for caller, goodbye, code in refused:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await caller.stub.Leave(goodbye, metadata=caller.metadata)
                assert info.value.code() == code, (goodbye.reason, info.value.details())
            assert len(coordinator.registry) == 2
            await alice.stub.Leave(pb.Goodbye(session_id=alice.session_id, reason="stopped\nby its operator"), metadata=alice.metadata)
            assert len(coordinator.registry) == 1 and coordinator.round is not None and "alice" in coordinator.round.phase.gone
            for c in (alice, bob):
                await c.close()

    run(scenario())
    left = [e for e in recorder.of(ClientLeft) if e.client == "alice"]
    assert left[0].reason == "stopped\nby its operator" and left[0].awaited
