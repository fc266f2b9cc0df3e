"""Completing a round: combine its updates, step the model, make sure the new model is sane, serve it, evaluate,
record and checkpoint. A new global model whose outputs are not finite on the coordinator's evaluation data is
never kept (nor checkpointed, nor saved as final), whatever the rule: the step is undone and the record says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import torch

from fedtl.server.events import RoundClosed
from fedtl.server.rounds import Round
from fedtl.server.strategies.base import RoundContext

if TYPE_CHECKING:
    from fedtl.server.coordinator import Coordinator
    from fedtl.server.run_loop import RunLoop

logger = logging.getLogger(__name__)


async def complete_round(c: Coordinator, rnd: Round, run: RunLoop) -> None:
    loop, clock, schedule = asyncio.get_running_loop(), c.clock, c.cfg.schedule
    phases = {"train_and_collect": (rnd.train.closed_at or clock.monotonic()) - rnd.started}
    if len(rnd.phases) > 1:  # a protocol round (secure aggregation): each exchange's time, opening to closing
        phases.update({f"phase_{p.name}": p.closed_at - (p.opened_at or rnd.started) for p in rnd.phases})
    mark = clock.monotonic()
    aggregate = await loop.run_in_executor(c.fold, rnd.aggregator.result)
    applied = await loop.run_in_executor(c.fold, _apply_if_sane, c, rnd, aggregate)
    phases["aggregate"], mark = clock.monotonic() - mark, clock.monotonic()
    if applied:
        c.serving.publish(await loop.run_in_executor(c.cpu, c.model.prepare_trainable))
    phases["serialize"], mark = clock.monotonic() - mark, clock.monotonic()
    record = rnd.record(schedule.rounds, c.serving.take_bytes_sent())
    record.applied = applied
    record.download_codec = c.cfg.download_codec
    record.secure = rnd.aggregator.protocol is not None
    if aggregate.metrics:  # figures only the rule could compute (secure aggregation: weighted sums, no client's own)
        record.examples = int(aggregate.metrics.get("examples", record.examples))
        record.train_loss = aggregate.metrics.get("train_loss", record.train_loss)
        record.train_accuracy = aggregate.metrics.get("train_accuracy", record.train_accuracy)
        record.epsilon = aggregate.metrics.get("epsilon", record.epsilon)
    if c.aggregate_metrics is not None and not record.secure:  # the operator's own summary of what the clients reported
        reports = [(rnd.train.answered[name], rnd.metrics[name].as_dict()) for name in record.clients]
        try:
            record.client_metrics = await loop.run_in_executor(c.cpu, c.aggregate_metrics, reports)
        except Exception as exc:  # the operator's code: its failure is said each round, and the round goes on
            logger.error("round %d: --metric-aggregation %s failed: %s: %s", rnd.number, c.cfg.metric_aggregation, type(exc).__name__, exc)
    if c.evaluator is not None and schedule.eval_every and (rnd.number % schedule.eval_every == 0 or rnd.number == schedule.rounds):
        ev = await run.evaluate(rnd.number)
        record.test_loss, record.test_accuracy, record.eval_seconds = ev.loss, ev.accuracy, ev.seconds
        record.eval_cache_used, record.eval_cache_build_seconds = ev.cache_used, ev.cache_build_seconds
    phases["evaluate"], mark = clock.monotonic() - mark, clock.monotonic()
    c.checkpoints.round_done(rnd.number)
    c.round = None
    record.seconds = clock.monotonic() - rnd.started
    record.elapsed = c.checkpoints.elapsed()
    record.rejected = c.intake.take_refusals()  # everything refused since the previous record
    await c.checkpoints.writer.flush()  # the previous round's checkpoint has landed
    phases["previous_write"] = clock.monotonic() - mark
    record.phases = {k: round(v, 4) for k, v in phases.items()}
    c.bus.publish(RoundClosed(record))
    await c.checkpoints.write_in_background()


def _apply_if_sane(c: Coordinator, rnd: Round, aggregate) -> bool:  # type: ignore[no-untyped-def]
    """Step the model (on the fold thread); undo the step when the result is not finite."""
    names = c.model.trainable
    before = {n: c.model.state[n].detach().clone() for n in names}
    strategy_state = {k: v.clone() for k, v in c.strategy.state_dict().items()}
    c.strategy.apply(c.model.state, aggregate, RoundContext(rnd.number, rnd.expectation.kind, c.model.parameters))
    finite = all(bool(torch.isfinite(c.model.state[n]).all()) for n in names if c.model.state[n].is_floating_point())
    if finite and (c.evaluator is None or c.evaluator.outputs_finite()):
        return True
    with torch.no_grad():
        for n in names:
            c.model.state[n].copy_(before[n])
    c.strategy.load_state_dict(strategy_state)
    logger.error("round %d: the aggregate of %s would make the global model's outputs non-finite; not applied (the model "
                 "stays as it was)", rnd.number, ", ".join(sorted(rnd.train.answered)[:10]))
    return False
