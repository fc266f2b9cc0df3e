"""Round events on the bus, seen by a second sink (tests/recording_sink.py), and the run loop on a manual clock:
a 600 s round deadline passes without waiting, and every step is awaited as an event, never slept for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import torch
from inprocess import RawClient, running_server
from recording_sink import Recorder

from fedtl.common import tensorcodec
from fedtl.server.clock import ManualClock
from fedtl.server.events import (
    CheckpointWritten,
    ClientJoined,
    Diverging,
    Event,
    EventBus,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    RoundWaiting,
    RunFinished,
    RunStarted,
    UpdateAccepted,
    UpdateRefused,
)


def _zero_update(blob: bytearray) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in tensorcodec.decode(blob).tensors.items()}


async def _joined(port: int, names: list[str]) -> list[RawClient]:
    clients = [RawClient(port, n) for n in names]
    for c in clients:
        await c.connect()
    return clients


def test_a_round_publishes_its_events_in_order_and_the_round_log_is_one_subscriber(tmp_path: Path) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "1"], sinks=[recorder]) as (coordinator, port):
            clients = await _joined(port, ["a", "b"])
            tasks = [(await c.next_instruction()).train for c in clients]
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            for c, t, n in zip(clients, tasks, (3, 5)):
                await c.upload_raw(c.update_messages(t, update, n))
            finished = await recorder.wait_for(RunFinished)
            assert finished.outcome == "completed" and finished.completed == 1 and finished.final_model
            await recorder.wait_for(CheckpointWritten, lambda e: e.round == 1)
            for c in clients:
                await c.close()

    asyncio.run(scenario())
    kinds = recorder.kinds()
    # clients may connect while the server still prepares the model, so joins and RunStarted have no fixed order
    assert kinds.index("RunStarted") < kinds.index("RoundOpened") and kinds.index("ClientJoined") < kinds.index("RoundOpened")
    assert kinds.index("RoundOpened") < kinds.index("UpdateAccepted")
    assert kinds.index("UpdateAccepted") < kinds.index("RoundClosed") < kinds.index("RunFinished")
    assert not recorder.of(RunStarted)[0].resumed
    assert sorted(e.client for e in recorder.of(ClientJoined)) == ["a", "b"]
    assert recorder.of(RoundOpened)[0].selected == ("a", "b")
    assert sorted((e.client, e.examples) for e in recorder.of(UpdateAccepted)) == [("a", 3), ("b", 5)]
    record = recorder.of(RoundClosed)[0].record
    assert record.examples == 8 and record.close_reason == "all_answered" and record.clients == ["a", "b"]
    assert all(e.ts > 0 for e in recorder.events)
    logged = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert logged[-1]["round"] == 1 and logged[-1]["examples"] == 8 and logged[-1]["close_reason"] == "all_answered"
    assert logged[-1]["message"].startswith("round 1/1 | clients 2/2") and logged[-1]["ts"] > 0


def test_a_round_deadline_passes_on_the_manual_clock_without_waiting(tmp_path: Path) -> None:
    recorder, clock = Recorder(), ManualClock()

    async def scenario() -> None:
        args = ["--min-clients", "2", "--rounds", "1", "--round-timeout", "600", "--round-retries", "0", "--finish-grace", "5"]
        async with running_server(tmp_path, args, clock=clock, sinks=[recorder]) as (coordinator, port):
            clients = await _joined(port, ["a", "b"])
            tasks = [(await c.next_instruction()).train for c in clients]
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            await clients[0].upload_raw(clients[0].update_messages(tasks[0], update, 4))  # b never answers
            await recorder.wait_for(UpdateAccepted)
            clock.advance(599)
            waiting = await recorder.wait_for(RoundWaiting)  # the round says who it still waits for
            assert waiting.missing == ("b",) and waiting.answered == 1 and waiting.seconds_left == pytest.approx(1.0)
            assert not recorder.of(RoundFailed)
            clock.advance(1)
            failed = await recorder.wait_for(RoundFailed)
            assert failed.close_reason == "deadline" and failed.missing == ("b",) and failed.answered == 1
            finished = await recorder.wait_for(RunFinished)
            assert finished.outcome == "failed" and "Gave up after 1 attempts" in finished.message
            clock.advance(5)  # the finish grace for clients to hang up
            for c in clients:
                await c.close()

    asyncio.run(scenario())


def test_refusals_are_events_with_a_stable_reason(tmp_path: Path) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with running_server(tmp_path, ["--min-clients", "2", "--rounds", "1"], sinks=[recorder]) as (coordinator, port):
            clients = await _joined(port, ["a", "b"])
            tasks = [(await c.next_instruction()).train for c in clients]
            update = _zero_update(await clients[0].download(tasks[0].base_digest))
            nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in update.items()}
            with pytest.raises(grpc.RpcError):
                await clients[0].upload_raw(clients[0].update_messages(tasks[0], nan, 4))
            refused = await recorder.wait_for(UpdateRefused)
            assert (refused.client, refused.reason, refused.round) == ("a", "non_finite", 1) and "NaN" in refused.message
            for c in clients:
                await c.close()

    asyncio.run(scenario())


def test_a_failing_optional_sink_does_not_stop_the_others_but_a_critical_one_does() -> None:
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("disk full")

    bus = EventBus(ManualClock())
    bus.subscribe(broken, critical=False)
    bus.subscribe(seen.append)
    bus.publish(RunFinished("completed", 1, "done", None))
    assert len(seen) == 1 and seen[0].ts > 0
    bus.subscribe(broken)
    with pytest.raises(RuntimeError, match="disk full"):
        bus.publish(RunFinished("completed", 1, "done", None))


def test_asking_for_more_clients_than_are_connected_is_said_out_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        args = ["--min-clients", "2", "--clients-per-round", "5", "--rounds", "1"]
        async with running_server(tmp_path, args, sinks=[recorder]) as (coordinator, port):
            clients = await _joined(port, ["a", "b"])
            opened = await recorder.wait_for(RoundOpened)
            assert opened.wanted == 5 and opened.selected == ("a", "b")
            for c in clients:
                await c.close()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert "round 1 asks for 5 clients but only 2 are connected: it trains with 2" in caplog.text


def test_a_diverging_model_is_reported(tmp_path: Path) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        args = ["--min-clients", "1", "--rounds", "1", "--eval-every", "1"]
        async with running_server(tmp_path, args, sinks=[recorder]) as (coordinator, port):
            (client,) = await _joined(port, ["a"])
            task = (await client.next_instruction()).train
            update = _zero_update(await client.download(task.base_digest))
            g = torch.Generator().manual_seed(0)
            huge = {k: torch.randn(v.shape, generator=g) * 50 if v.is_floating_point() and k.startswith("fc") else v
                    for k, v in update.items()}
            await client.upload_raw(client.update_messages(task, huge, 4))
            diverging = await recorder.wait_for(Diverging)
            assert diverging.round == 1 and diverging.loss > 2 * diverging.reference and "--server-lr" in diverging.message
            await client.close()

    asyncio.run(scenario())


def test_the_loss_watch_compares_with_the_initial_model_and_survives_a_restart() -> None:
    from fedtl.server.divergence import LossWatch

    watch = LossWatch()
    assert watch.observe(0, 2.3) is None and watch.observe(1, 1.2) is None and watch.observe(2, 4.0) is None
    assert watch.observe(3, 30.6) == 2.3 and watch.observe(4, float("nan")) == 2.3
    restarted = LossWatch()
    restarted.restore(watch.state())
    assert restarted.observe(5, 5.0) == 2.3
    no_initial = LossWatch()
    assert no_initial.observe(1, 1.0) is None and no_initial.observe(2, 2.5) == 1.0
