"""Completing a round: combine its updates, step the model, make sure the new model is sane, serve it, evaluate,
record and checkpoint. A new global model whose outputs are not finite on the coordinator's evaluation data is
never kept (nor checkpointed, nor saved as final), whatever the rule: the step is undone and the record says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor

import torch

from fedtl.common.config import UpdateKind
from fedtl.server.best_model import BestModel
from fedtl.server.checkpoints import Checkpointer
from fedtl.server.clock import Clock
from fedtl.server.evaluation import Evaluations, ServerEvaluator
from fedtl.server.events import EventBus, RoundClosed
from fedtl.server.intake import UpdateIntake
from fedtl.server.model_state import GlobalModel
from fedtl.server.rounds import Round
from fedtl.server.serving import ModelServer
from fedtl.server.settings.rounds import Schedule
from fedtl.server.statistics_rounds import StatisticsRound, StatisticsRounds
from fedtl.server.strategies.base import Aggregate, RoundContext, Strategy
from fedtl.server.strategies.stacked import FailedClosed

logger = logging.getLogger(__name__)

Summary = Callable[[list[tuple[int, dict[str, float]]]], dict[str, float]]  # --metric-aggregation


class RoundCompletion:
    def __init__(self, *, model: GlobalModel, strategy: Strategy, serving: ModelServer, evaluator: ServerEvaluator | None,
                 evaluations: Evaluations | None, checkpoints: Checkpointer, intake: UpdateIntake, bus: EventBus, clock: Clock,
                 cpu: Executor, fold: Executor, schedule: Schedule, download_codec: str, summary: Summary | None, summary_ref: str,
                 statistics: StatisticsRounds | None = None, best: BestModel | None = None) -> None:
        self.model, self.strategy, self.serving = model, strategy, serving
        self.evaluator, self.evaluations, self.checkpoints, self.intake = evaluator, evaluations, checkpoints, intake
        self.bus, self.clock, self.cpu, self.fold = bus, clock, cpu, fold
        self.schedule, self.download_codec, self.summary, self.summary_ref = schedule, download_codec, summary, summary_ref
        self.statistics = statistics
        self.best = best  # the validation slice picks best_model.safetensors (None: no slice)

    async def complete(self, rnd: Round) -> None:
        loop, clock, schedule = asyncio.get_running_loop(), self.clock, self.schedule
        phases = {"train_and_collect": (rnd.train.closed_at or clock.monotonic()) - rnd.started}
        if len(rnd.phases) > 1:  # a protocol round (secure aggregation): each exchange's time, opening to closing
            phases.update({f"phase_{p.name}": p.closed_at - (p.opened_at or rnd.started) for p in rnd.phases})
        mark = clock.monotonic()
        dropped = ""
        try:
            aggregate = await loop.run_in_executor(self.fold, rnd.aggregator.result)
        except FailedClosed as exc:  # one participant's bad input must not end the run: drop the round, keep the model
            dropped, aggregate = str(exc), Aggregate({}, 0.0, 0)
            logger.error("round %d dropped: %s; the model stays as it was and the run goes on (under SecAgg+ the coordinator "
                         "cannot tell whose input it was: docs/security.md)", rnd.number, exc)
        pooled = self._statistics_round(rnd)
        applied = not dropped and await loop.run_in_executor(self.fold, self._apply_if_sane, rnd, aggregate, pooled)
        phases["aggregate"], mark = clock.monotonic() - mark, clock.monotonic()
        if applied:
            self.serving.publish(await loop.run_in_executor(self.cpu, self.model.prepare_trainable))
        phases["serialize"], mark = clock.monotonic() - mark, clock.monotonic()
        record = rnd.record(schedule.rounds, self.serving.take_bytes_sent())
        record.applied, record.dropped, record.left_out = applied, dropped, dict(aggregate.left_out)
        record.download_codec = self.download_codec
        record.secure = rnd.aggregator.protocol is not None
        if pooled is not None:
            record.statistics = pooled.kind
        if aggregate.metrics:  # figures only the rule could compute (secure aggregation: weighted sums, no client's own)
            record.examples = int(aggregate.metrics.get("examples", record.examples))
            record.train_loss = aggregate.metrics.get("train_loss", record.train_loss)
            record.train_accuracy = aggregate.metrics.get("train_accuracy", record.train_accuracy)
            record.epsilon = aggregate.metrics.get("epsilon", record.epsilon)
            record.record_epsilon = aggregate.metrics.get("record_epsilon", record.record_epsilon)
        if self.summary is not None and not record.secure:  # the operator's own summary of what the clients reported
            reports = [(rnd.train.answered[name], rnd.metrics[name].as_dict()) for name in record.clients]
            try:
                record.client_metrics = await loop.run_in_executor(self.cpu, self.summary, reports)
            except Exception as exc:  # the operator's code: its failure is said each round, and the round goes on
                logger.error("round %d: --metric-aggregation %s failed: %s: %s", rnd.number, self.summary_ref, type(exc).__name__, exc)
        if self.evaluations is not None and schedule.eval_every and (rnd.number % schedule.eval_every == 0 or rnd.number == schedule.rounds):
            ev = await self.evaluations.run(rnd.number)
            record.test_loss, record.test_accuracy, record.eval_seconds = ev.loss, ev.accuracy, ev.seconds
            record.eval_cache_used, record.eval_cache_build_seconds = ev.cache_used, ev.cache_build_seconds
        self.checkpoints.round_done(rnd.number)
        if self.best is not None and not math.isnan(record.test_accuracy):  # scored when the test split is
            val = await loop.run_in_executor(self.cpu, self.best.consider, rnd.number)
            record.validation_accuracy, record.best_round = val.accuracy, val.best_round
        phases["evaluate"], mark = clock.monotonic() - mark, clock.monotonic()
        record.seconds = clock.monotonic() - rnd.started
        record.elapsed = self.checkpoints.elapsed()
        record.rejected = self.intake.take_refusals()  # everything refused since the previous record
        await self.checkpoints.writer.flush()  # the previous round's checkpoint has landed
        phases["previous_write"] = clock.monotonic() - mark
        record.phases = {k: round(v, 4) for k, v in phases.items()}
        self.bus.publish(RoundClosed(record))
        await self.checkpoints.write_in_background()

    def _statistics_round(self, rnd: Round) -> StatisticsRound | None:
        """What a statistics round's pooled statistics are for (None: the round trained)."""
        if rnd.expectation.kind != UpdateKind.STATISTICS or self.statistics is None:
            return None
        return self.statistics.for_round(rnd.number)

    def _apply_if_sane(self, rnd: Round, aggregate: Aggregate, pooled: StatisticsRound | None) -> bool:
        """Step the model (on the fold thread); undo the step when the result is not finite."""
        model, names = self.model, self.model.trainable
        before = {n: model.state[n].detach().clone() for n in names}
        strategy_state = {k: v.clone() for k, v in self.strategy.state_dict().items()}
        if pooled is not None:
            logger.info("round %d: %s", rnd.number, pooled.apply(aggregate))
        else:
            self.strategy.apply(model.state, aggregate, RoundContext(rnd.number, rnd.expectation.kind, model.parameters))
        finite = all(bool(torch.isfinite(model.state[n]).all()) for n in names if model.state[n].is_floating_point())
        if finite and (self.evaluator is None or self.evaluator.outputs_finite()):
            return True
        with torch.no_grad():
            for n in names:
                model.state[n].copy_(before[n])
        self.strategy.load_state_dict(strategy_state)
        logger.error("round %d: the aggregate of %s would make the global model's outputs non-finite; not applied (the model "
                     "stays as it was)", rnd.number, ", ".join(sorted(rnd.train.answered)[:10]))
        return False
