"""The run: wait for clients, run each round (retrying one that gets too few answers), finish.

Time comes from the coordinator's clock and every step is published on its event bus, so a test
drives a run with a manual clock and awaits events instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from typing import TYPE_CHECKING

from fedtl.common.config import DataAssignment, Finished, TrainTask
from fedtl.server.clock import first_of
from fedtl.server.events import (
    PartitionsFixed,
    RoundFailed,
    RoundOpened,
    RoundWaiting,
    RunFinished,
    RunStarted,
    WaitingForClients,
)
from fedtl.server.rounds import CloseReason, Phase, Round
from fedtl.server.strategies.base import BudgetSpent, RoundContext
from fedtl.server.strategies.stacked import AggregationError

if TYPE_CHECKING:
    from fedtl.server.coordinator import Coordinator

logger = logging.getLogger(__name__)

NOTE_EVERY = 10.0  # seconds between "still waiting for clients to connect" notes
ROUND_NOTE_EVERY = 30.0  # seconds between "round N still waits for ..." notes


class RunLoop:
    def __init__(self, c: Coordinator) -> None:
        self.c = c
        self.schedule = c.cfg.schedule
        self.failure = ""  # why the run is stopping with an error, for Finished and the log
        self.budget = ""  # why a strategy's budget ended the run early (privacy), for Finished and the log

    async def run(self) -> int:
        c, loop = self.c, asyncio.get_running_loop()
        ck = c.checkpoints
        # announced before the (slow) model preparation; clients may join at any point, before or after it
        c.bus.publish(RunStarted(c.run_id, self.schedule.rounds, ck.resumed, ck.completed, c.strategy.describe(), c.listen_address))
        static = await loop.run_in_executor(c.cpu, c.model.prepare_static)
        c.serving.publish(await loop.run_in_executor(c.cpu, c.model.prepare_trainable), static)
        if ck.completed == 0:
            await ck.write_now()  # a fresh run is durable before round 1: a crash at any later point resumes, never restarts
            if self.schedule.eval_every and c.evaluations is not None:
                await c.evaluations.run(0)
        while ck.completed < self.schedule.rounds and not c.stopping.is_set():
            if not await self._run_round(ck.completed + 1):
                if c.stopping.is_set() or self.budget:
                    break
                await ck.writer.flush()
                return await self._finish("failed", self.failure)
        await ck.writer.flush()
        if c.stopping.is_set():  # the last completed round's checkpoint is on disk (round 0's at least)
            return await self._finish("stopped", f"server stopped ({c.stop_reason}) after round {ck.completed}; restart it to resume")
        await loop.run_in_executor(c.cpu, ck.save_final)
        if self.budget:
            return await self._finish("completed", f"{self.budget}: run ended after {ck.completed} rounds; final model in {c.output}")
        return await self._finish("completed", f"run complete after {ck.completed} rounds; final model in {c.output}")

    # ================================================================ rounds

    async def _run_round(self, number: int) -> bool:
        c, attempts = self.c, self.schedule.round_retries + 1
        for attempt in range(1, attempts + 1):
            if not await self._wait_for_clients():
                return False
            try:
                rnd = self._open_round(number, attempt)
            except BudgetSpent as exc:  # differential privacy's ε: the run ends here, cleanly, with the model it has
                self.budget = str(exc)
                return False
            except AggregationError as exc:  # the rule cannot run with the clients selected (secure aggregation's safety checks)
                self.failure = str(exc)
                c.bus.publish(RoundFailed(number, attempt, attempts, 0, 0, 0, (), "setup", self.failure))
                continue
            completed = await self._run_phases(rnd)
            await asyncio.get_running_loop().run_in_executor(c.fold, lambda: None)  # every accepted fold has landed
            if c.stopping.is_set():
                logger.warning("round %d abandoned: %s", number, c.stop_reason)
                c.round = None
                return False
            if completed:
                try:
                    await c.completion.complete(rnd)
                    c.round = None
                    return True
                except AggregationError as exc:  # too few updates for the rule: like too few answers
                    self.failure = f"round {number}: {exc}"
                    c.bus.publish(RoundFailed(number, attempt, attempts, len(rnd.train.answered), len(rnd.selected), 0, (), "rule",
                                              self.failure))
                    c.round = None
                    continue
            phase = rnd.phase  # the phase that fell short
            missing = tuple(sorted(set(phase.expected) - set(phase.answered)))
            reason = phase.close_reason.value if phase.close_reason else ""
            what = "updates" if phase.name == "train" else f"answers in its {phase.name} phase"
            flags = "--min-fit-clients" + (", --secagg-threshold" if phase.floor else "")
            self.failure = (f"round {number} got {len(phase.answered)} of {len(phase.expected)} {what} ({reason}), needs {phase.required} "
                            f"({flags}); no answer from {', '.join(missing[:8])}")
            c.bus.publish(RoundFailed(number, attempt, attempts, len(phase.answered), len(phase.expected), phase.required, missing, reason,
                                      self.failure))
            c.round = None
        self.failure = f"{self.failure}. Gave up after {attempts} attempts: check the clients' logs, or raise --round-timeout"
        return False

    async def _run_phases(self, rnd: Round) -> bool:
        """Open each phase in turn until one fails or the deadline passes; True when the last one completed."""
        c = self.c
        deadline = rnd.started + self.schedule.round_timeout
        while True:
            phase = rnd.phase
            while not await first_of(c.clock, min(ROUND_NOTE_EVERY, deadline - c.clock.monotonic()), phase.done, c.stopping):
                left = deadline - c.clock.monotonic()
                if left <= 0:
                    break
                missing = tuple(sorted(phase.outstanding()))
                c.bus.publish(RoundWaiting(rnd.number, phase.name, len(phase.answered), phase.target, missing, left))
            if not phase.closed:
                phase.close(CloseReason.STOPPING if c.stopping.is_set() else CloseReason.DEADLINE, c.clock.monotonic())
            if c.stopping.is_set() or not phase.can_continue:
                return False
            if rnd.finished:
                return True
            nxt = rnd.advance()
            nxt.opened_at = c.clock.monotonic()
            if rnd.aggregator.protocol is not None:
                rnd.aggregator.protocol.opened(nxt.name, list(nxt.expected))
            c.send(nxt)
            nxt.close_if_due(c.clock.monotonic())

    def _open_round(self, number: int, attempt: int) -> Round:
        c, s = self.c, self.schedule
        connected = c.registry.connected()
        selected, target = c.selector.open(connected)
        refs, base = c.serving.refs, c.serving.base_digest
        evaluate = bool(s.client_eval_every) and number % s.client_eval_every == 0
        kind = c.cfg.train.update_kind

        context = RoundContext(number, kind, c.model.parameters, tuple(selected), attempt, base, len(connected))
        aggregator = c.strategy.open(c.model.tensors(c.model.trainable), context)  # AggregationError: this round cannot run
        expect = aggregator.expectation(c.strategy.expectation(c.model.expectation(number, base, kind, s.max_examples, c.cfg.upload_codec)))
        encoding = min(expect.encodings)  # the codec clients are told to use

        def task(name: str) -> TrainTask:
            return TrainTask(number, refs, base, c.cfg.train_for(number), c.registry.assignment(name) or DataAssignment(scheme="none"),
                             evaluate, s.round_timeout, encoding)
        now = c.clock.monotonic()
        rnd = Round(number, attempt, selected, expect, aggregator, now, self._phases(aggregator, selected, min(target, len(selected)), task))
        c.round = rnd
        if c.checkpoints.clock_start is None:
            c.checkpoints.clock_start = now
        c.send(rnd.phase)
        wanted = s.clients_per_round or (math.ceil(s.fraction * len(connected)) if s.fraction else len(connected))
        c.bus.publish(RoundOpened(number, s.rounds, attempt, tuple(selected), len(connected), rnd.phase.target, s.round_timeout,
                                  max(wanted, s.min_fit_clients)))
        return rnd

    def _phases(self, aggregator, selected: list[str], target: int, task) -> list[Phase]:  # type: ignore[no-untyped-def]
        """The plain round's one phase ("train"), or the phases of the rule's protocol: each needs its threshold of answers."""
        min_fit, protocol = self.schedule.min_fit_clients, aggregator.protocol
        if protocol is None:
            return [Phase("train", selected, target, min_fit, task)]
        floor = protocol.needed
        first = Phase(protocol.phases[0], selected, target, min_fit, lambda name: protocol.task(task(name)), floor)
        return [first] + [Phase(p, [], 0, min_fit, functools.partial(protocol.instruction, p), floor) for p in protocol.phases[1:]]

    # ================================================================ waiting and the end

    async def _wait_for_clients(self) -> bool:
        """Until --min-clients are connected at the moment the round starts (joins and leaves during the join grace included)."""
        c, needed = self.c, max(self.schedule.min_clients, self.schedule.min_fit_clients)
        while True:
            if not await self._wait_for_count():
                return False
            if c.registry.partition_count is None:
                await self._join_grace()
                if len(c.registry) < needed:
                    continue  # someone left during the grace: wait again, and fix the shards only when enough are here
                assigned = c.registry.fix_partitions()
                c.bus.publish(PartitionsFixed(c.registry.partition_count or 0, c.cfg.partitions.scheme, assigned))
            if len(c.registry) >= needed or c.stopping.is_set():
                return not c.stopping.is_set()

    async def _wait_for_count(self) -> bool:
        c, s = self.c, self.schedule
        needed = max(s.min_clients, s.min_fit_clients)
        started = c.clock.monotonic()
        last_note = None
        while len(c.registry) < needed and not c.stopping.is_set():
            now = c.clock.monotonic()
            if s.wait_timeout and now - started > s.wait_timeout:
                self.failure = f"only {len(c.registry)} of the {needed} clients needed connected within {s.wait_timeout:g}s (--wait-timeout)"
                return False
            if last_note is None or now - last_note >= NOTE_EVERY:
                c.bus.publish(WaitingForClients(len(c.registry), needed, now - started, s.wait_timeout))
                last_note = now
            await c.wakeup.wait(min(NOTE_EVERY, s.wait_timeout or NOTE_EVERY))
        return not c.stopping.is_set()

    async def _join_grace(self) -> None:
        """Before round 1, let clients that start together all join (the shard count is fixed after this)."""
        c = self.c
        while not c.stopping.is_set():
            quiet = c.clock.monotonic() - c.registry.last_join
            if quiet >= self.schedule.join_grace:
                break
            await c.wakeup.wait(self.schedule.join_grace - quiet)

    async def _finish(self, outcome: str, message: str) -> int:
        """Tell every client the run is over and give them a moment to hang up."""
        c = self.c
        late = c.intake.take_refusals()
        if late:
            logger.warning("refused after the last round record: %s", ", ".join(f"{k}={v}" for k, v in sorted(late.items())))
        final = str(c.output) if outcome == "completed" else None
        c.bus.publish(RunFinished(outcome, c.checkpoints.completed, message, final))
        c.final = Finished(message, outcome == "failed", resume=outcome == "stopped")  # a stopped run is paused
        for name in c.registry.connected():
            session = c.registry.by_name(name)
            if session is not None:
                session.outbox.put_nowait(c.final)
        deadline = c.clock.monotonic() + self.schedule.finish_grace
        while len(c.registry) and c.clock.monotonic() < deadline:
            await c.wakeup.wait(deadline - c.clock.monotonic())
        c.cpu.shutdown(wait=False)
        c.fold.shutdown(wait=False)
        c.checkpoints.writer.shutdown()
        return 2 if outcome == "failed" else 0
