"""The run: wait for clients, run each round (retrying one that gets too few answers), finish.

It works with the parts it is given (RunParts), not the coordinator. Time comes from the clock and every step is
published on the event bus, so a test drives a run with a manual clock and awaits events instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fedtl.common.config import DataAssignment, Finished, TrainTask
from fedtl.server.checkpoints import Checkpointer
from fedtl.server.clock import Clock, Wakeup, first_of
from fedtl.server.completion import RoundCompletion
from fedtl.server.config import ServerConfig
from fedtl.server.evaluation import Evaluations
from fedtl.server.events import (
    EventBus,
    PartitionsFixed,
    RoundFailed,
    RoundOpened,
    RoundWaiting,
    RunFinished,
    RunStarted,
    WaitingForClients,
)
from fedtl.server.intake import UpdateIntake
from fedtl.server.model_state import GlobalModel
from fedtl.server.registry import Registry
from fedtl.server.rounds import CloseReason, Phase, Round
from fedtl.server.selection import Selector
from fedtl.server.serving import ModelServer
from fedtl.server.statistics_rounds import StatisticsRounds
from fedtl.server.strategies.base import Aggregator, BudgetSpent, RoundContext, Strategy
from fedtl.server.strategies.stacked import AggregationError

logger = logging.getLogger(__name__)

NOTE_EVERY = 10.0  # seconds between "still waiting for clients to connect" notes
REJOIN_GRACE = 60.0  # seconds a resumed run waits for all of --min-clients to come back before it starts with its quorum
ROUND_NOTE_EVERY = 30.0  # seconds between "round N still waits for ..." notes


@dataclass
class RunState:
    """What the run loop and the servicer-facing coordinator share: the round now open, the last word to clients, and
    the request to stop."""

    round: Round | None = None
    final: Finished | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = ""


@dataclass(frozen=True)
class RunParts:
    """What the run loop works with, and nothing else (not the servicer-facing coordinator)."""

    cfg: ServerConfig
    state: RunState
    registry: Registry
    selector: Selector
    model: GlobalModel
    serving: ModelServer
    strategy: Strategy
    checkpoints: Checkpointer
    completion: RoundCompletion
    evaluations: Evaluations | None
    intake: UpdateIntake
    bus: EventBus
    clock: Clock
    wakeup: Wakeup
    cpu: ThreadPoolExecutor
    fold: ThreadPoolExecutor
    send: Callable[[Phase], None]  # a phase's instruction to its clients
    tell_clients: Callable[[Finished, float], Awaitable[None]]  # the run's end, to every client; waits up to the grace for them
    statistics: StatisticsRounds | None = None  # rounds that collect statistics instead of training (--head-init, --batchnorm)


class RunLoop:
    def __init__(self, parts: RunParts) -> None:
        self.p = parts
        self.schedule = parts.cfg.schedule
        self.failure = ""  # why the run is stopping with an error, for Finished and the log
        self.budget = ""  # why a strategy's budget ended the run early (privacy), for Finished and the log
        self.rounds_here = 0  # rounds this process completed (a resumed run's first round waits for its sites: REJOIN_GRACE)

    async def run(self, listen_address: str) -> int:
        p, loop = self.p, asyncio.get_running_loop()
        ck = p.checkpoints
        # announced before the (slow) model preparation; clients may join at any point, before or after it
        p.bus.publish(RunStarted(ck.run_id, self.schedule.rounds, ck.resumed, ck.completed, p.strategy.describe(), listen_address))
        static = await loop.run_in_executor(p.cpu, p.model.prepare_static)
        p.serving.publish(await loop.run_in_executor(p.cpu, p.model.prepare_trainable), static)
        if ck.completed == 0:
            await ck.write_now()  # a fresh run is durable before round 1: a crash at any later point resumes, never restarts
            if self.schedule.eval_every and p.evaluations is not None:
                await p.evaluations.run(0)
        while ck.completed < self.schedule.rounds and not p.state.stopping.is_set():
            if not await self._run_round(ck.completed + 1):
                if p.state.stopping.is_set() or self.budget:
                    break
                await ck.writer.flush()
                return await self._finish("failed", self.failure)
        await ck.writer.flush()
        if p.state.stopping.is_set():  # the last completed round's checkpoint is on disk (round 0's at least)
            return await self._finish("stopped", f"server stopped ({p.state.stop_reason}) after round {ck.completed}; restart it to resume")
        await loop.run_in_executor(p.cpu, ck.save_final)
        ended = f"{self.budget}: run ended" if self.budget else "run complete"
        return await self._finish("completed", f"{ended} after {ck.completed} rounds; final model in {p.checkpoints.output}{self._best()}")

    def _best(self) -> str:
        best = self.p.completion.best
        return f"; best on the validation slice: round {best.round} ({100 * best.accuracy:.2f}%), in {best.path}" if best and best.round else ""

    # ================================================================ rounds

    async def _run_round(self, number: int) -> bool:
        p, attempts = self.p, self.schedule.round_retries + 1
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
                p.bus.publish(RoundFailed(number, attempt, attempts, 0, 0, 0, (), "setup", self.failure))
                continue
            completed = await self._run_phases(rnd)
            await asyncio.get_running_loop().run_in_executor(p.fold, lambda: None)  # every accepted fold has landed
            if p.state.stopping.is_set():
                logger.warning("round %d abandoned: %s", number, p.state.stop_reason)
                p.state.round = None
                return False
            if completed:
                try:
                    await p.completion.complete(rnd)
                    self.rounds_here += 1
                    p.state.round = None
                    return True
                except AggregationError as exc:  # too few updates for the rule: like too few answers
                    self.failure = f"round {number}: {exc}"
                    p.bus.publish(RoundFailed(number, attempt, attempts, len(rnd.train.answered), len(rnd.selected), 0, (), "rule",
                                              self.failure))
                    p.state.round = None
                    continue
            phase = rnd.phase  # the phase that fell short
            missing = tuple(sorted(set(phase.expected) - set(phase.answered)))
            reason = phase.close_reason.value if phase.close_reason else ""
            what = "updates" if phase.name == "train" else f"answers in its {phase.name} phase"
            flags = "--min-fit-clients" + (", --secagg-threshold" if phase.floor else "")
            self.failure = (f"round {number} got {len(phase.answered)} of {len(phase.expected)} {what} ({reason}), needs {phase.required} "
                            f"({flags}); no answer from {', '.join(missing[:8])}")
            p.bus.publish(RoundFailed(number, attempt, attempts, len(phase.answered), len(phase.expected), phase.required, missing, reason,
                                      self.failure))
            p.state.round = None
        self.failure = f"{self.failure}. Gave up after {attempts} attempts: check the clients' logs, or raise --round-timeout"
        return False

    async def _run_phases(self, rnd: Round) -> bool:
        """Open each phase in turn until one fails or the deadline passes; True when the last one completed."""
        p = self.p
        deadline = rnd.started + self.schedule.round_timeout
        while True:
            phase = rnd.phase
            while not (phase.closed or p.state.stopping.is_set()):  # woken by answers, the quorum, a note's time or the deadline
                woken = await first_of(p.clock, phase.wake_in(p.clock.monotonic(), deadline, ROUND_NOTE_EVERY), *phase.wakeups(), p.state.stopping)
                if phase.close_if_due(now := p.clock.monotonic()) or now >= deadline:  # the straggler wait may have ended it
                    break
                if not woken:  # a note every ROUND_NOTE_EVERY while it waits
                    p.bus.publish(RoundWaiting(rnd.number, phase.name, len(phase.answered), phase.target, tuple(sorted(phase.outstanding())), deadline - p.clock.monotonic()))
            if not phase.closed:
                phase.close(CloseReason.STOPPING if p.state.stopping.is_set() else CloseReason.DEADLINE, p.clock.monotonic())
            if p.state.stopping.is_set() or not phase.can_continue:
                return False
            if rnd.finished:
                return True
            nxt = rnd.advance()
            nxt.opened_at = p.clock.monotonic()
            if rnd.aggregator.protocol is not None:
                rnd.aggregator.protocol.opened(nxt.name, list(nxt.expected))
            p.send(nxt)
            nxt.close_if_due(p.clock.monotonic())

    def _open_round(self, number: int, attempt: int) -> Round:
        p, s = self.p, self.schedule
        connected = p.registry.connected()
        refs, base = p.serving.refs, p.serving.base_digest
        evaluate = bool(s.client_eval_every) and number % s.client_eval_every == 0
        train = p.cfg.train_for(number)
        plan = p.statistics
        statistics = plan.for_round(number) if plan is not None else None
        if plan is not None and statistics is not None:  # statistics from every connected client (up to a cap), pooled by their mean
            train = plan.round_config(statistics, train)
            target = len(selected := p.selector.sample(connected, plan.clients, p.registry.addresses()))
            context = RoundContext(number, train.update_kind, p.model.parameters, tuple(selected), attempt, base, len(connected))
            aggregator: Aggregator = statistics.aggregator(context, plan.caps)  # AggregationError: this round cannot run
            expect = aggregator.expectation(statistics.expectation(number, base, s.max_examples))
        else:
            selected, target = p.selector.open(connected, p.registry.addresses())
            context = RoundContext(number, train.update_kind, p.model.parameters, tuple(selected), attempt, base, len(connected))
            aggregator = p.strategy.open(p.model.tensors(p.model.trainable), context)  # AggregationError: this round cannot run
            expect = aggregator.expectation(p.strategy.expectation(p.model.expectation(number, base, train.update_kind, s.max_examples,
                                                                                         p.cfg.upload_codec)))
        encoding = min(expect.encodings)  # the codec clients are told to use

        def task(name: str) -> TrainTask:
            return TrainTask(number, refs, base, train, p.registry.assignment(name) or DataAssignment(scheme="none"),
                             evaluate, s.round_timeout, encoding)
        now = p.clock.monotonic()
        rnd = Round(number, attempt, selected, expect, aggregator, now, self._phases(aggregator, selected, min(target, len(selected)), task))
        p.state.round = rnd
        if p.checkpoints.clock_start is None:
            p.checkpoints.clock_start = now
        p.send(rnd.phase)
        wanted = s.clients_per_round or (math.ceil(s.fraction * len(connected)) if s.fraction else len(connected))
        p.bus.publish(RoundOpened(number, s.rounds, attempt, tuple(selected), len(connected), rnd.phase.target, s.round_timeout,
                                  max(wanted, s.min_fit_clients)))
        return rnd

    def _phases(self, aggregator, selected: list[str], target: int, task) -> list[Phase]:  # type: ignore[no-untyped-def]
        """The plain round's one phase ("train"), or the phases of the rule's protocol: each needs its threshold of answers."""
        min_fit, protocol = self.schedule.min_fit_clients, aggregator.protocol
        if protocol is None:  # a plain round closes once its quorum answered and the rest did not within the straggler wait
            return [Phase("train", selected, target, min_fit, task, straggler_wait=self.schedule.straggler_wait)]
        floor = protocol.needed
        first = Phase(protocol.phases[0], selected, target, min_fit, lambda name: protocol.task(task(name)), floor)
        return [first] + [Phase(p, [], 0, min_fit, functools.partial(protocol.instruction, p), floor) for p in protocol.phases[1:]]

    # ================================================================ waiting and the end

    def _needed(self, waited: float) -> int:
        """Connected clients a round starts with: --min-clients for round 1 (the federation forms and its shards are fixed)
        and, for a resumed run, until its sites had REJOIN_GRACE to come back; the quorum after that, so a site that
        left for good holds no later round back (a robust rule's quorum is all of them)."""
        s = self.schedule
        full = max(s.min_clients, s.min_fit_clients)
        if not self.p.checkpoints.completed or (not self.rounds_here and waited < REJOIN_GRACE):
            return full
        return s.min_fit_clients

    async def _wait_for_clients(self) -> bool:
        """Until enough clients are connected at the moment the round starts (joins and leaves during the join grace included)."""
        p = self.p
        while True:
            if not await self._wait_for_count():
                return False
            if p.registry.partition_count is None:
                await self._join_grace()
                if len(p.registry) < self._needed(0.0):
                    continue  # someone left during the grace: wait again, and fix the shards only when enough are here
                assigned = p.registry.fix_partitions()
                p.bus.publish(PartitionsFixed(p.registry.partition_count or 0, p.cfg.partitions.scheme, assigned))
            return not p.state.stopping.is_set()

    async def _wait_for_count(self) -> bool:
        p, s = self.p, self.schedule
        started = p.clock.monotonic()
        last_note = None
        while len(p.registry) < (needed := self._needed(p.clock.monotonic() - started)) and not p.state.stopping.is_set():
            now = p.clock.monotonic()
            if s.wait_timeout and now - started > s.wait_timeout:
                self.failure = f"only {len(p.registry)} of the {needed} clients needed connected within {s.wait_timeout:g}s (--wait-timeout)"
                return False
            if last_note is None or now - last_note >= NOTE_EVERY:
                p.bus.publish(WaitingForClients(len(p.registry), needed, now - started, s.wait_timeout))
                last_note = now
            grace_left = REJOIN_GRACE - (now - started) if p.checkpoints.completed and not self.rounds_here else 0.0  # wake at its end
            await p.wakeup.wait(max(0.05, min(NOTE_EVERY, s.wait_timeout or NOTE_EVERY, grace_left if grace_left > 0 else NOTE_EVERY)))
        return not p.state.stopping.is_set()

    async def _join_grace(self) -> None:
        """Before round 1, let clients that start together all join (the shard count is fixed after this)."""
        p = self.p
        while not p.state.stopping.is_set():
            quiet = p.clock.monotonic() - p.registry.last_join
            if quiet >= self.schedule.join_grace:
                break
            await p.wakeup.wait(self.schedule.join_grace - quiet)

    async def _finish(self, outcome: str, message: str) -> int:
        """Tell every client the run is over and give them a moment to hang up."""
        p = self.p
        if late := p.intake.take_refusals():
            logger.warning("refused after the last round record: %s", ", ".join(f"{k}={v}" for k, v in sorted(late.items())))
        p.bus.publish(RunFinished(outcome, p.checkpoints.completed, message, str(p.checkpoints.output) if outcome == "completed" else None))
        await p.tell_clients(Finished(message, outcome == "failed", resume=outcome == "stopped"), self.schedule.finish_grace)  # stopped: paused
        p.cpu.shutdown(wait=False)
        p.fold.shutdown(wait=False)
        p.checkpoints.writer.shutdown()
        return 2 if outcome == "failed" else 0
