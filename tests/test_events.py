"""Round events on the bus, seen by a second sink (tests/recording_sink.py), and the run loop on a manual clock:
a 600 s round deadline passes without waiting, and every step is awaited as an event, never slept for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import torch

from common import tensorcodec
from inprocess import RawClient, running_server
from recording_sink import Recorder
from server.clock import ManualClock
from server.events import (
    CheckpointWritten,
    ClientJoined,
    Event,
    EventBus,
    RoundClosed,
    RoundFailed,
    RoundOpened,
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
    assert kinds.index("RunStarted") < kinds.index("ClientJoined") < kinds.index("RoundOpened") < kinds.index("UpdateAccepted")
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
            await asyncio.sleep(0)  # let the run loop look at the clock: one second is left
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
