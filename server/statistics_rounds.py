"""Statistics rounds: every connected client (up to --statistics-clients) sends the float64 means of some statistics of
its data on the global model, the coordinator pools them by the example-weighted mean (the same means over the union
of their data, whatever the split) and writes what they determine into the model instead of taking a training step.

- round 1 under `--head-init`: a closed-form head (common/heads.py), equal to the same solve on the pooled data;
- the last round under `--batchnorm pool`: BatchNorm running statistics over every client's data (common/batchnorm.py).
When they run is server/settings/statistics.py.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping

import torch

from fedtl.common import batchnorm, heads
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.errors import ConfigError, UpdateRejected
from fedtl.common.models import Network
from fedtl.server.settings.statistics import StatisticsPlan
from fedtl.server.strategies.base import Aggregate, Aggregator
from fedtl.server.strategies.mean import MeanAggregator
from fedtl.server.strategies.weighting import Caps, capped
from fedtl.server.strategies.wrapping import WrappedAggregator
from fedtl.server.validation import Expectation, Update

logger = logging.getLogger(__name__)


class StatisticsRound(abc.ABC):
    kind: str = ""  # TrainConfig.statistics: what the clients compute

    @abc.abstractmethod
    def specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]: ...

    @abc.abstractmethod
    def apply(self, aggregate: Aggregate) -> str:
        """Write what the pooled statistics determine into the global model; what was done, for the log."""

    @abc.abstractmethod
    def problem(self, stats: Mapping[str, torch.Tensor]) -> str:
        """Why these statistics cannot be an honest client's ("" when they can)."""

    def expectation(self, number: int, base: str, max_examples: int) -> Expectation:
        return Expectation(number, base, UpdateKind.STATISTICS, self.specs(), frozenset(), max_examples)

    def aggregator(self, expect: Expectation, caps: Caps | None = None) -> Aggregator:
        """The example-weighted mean, each claim capped as `--weighting capped` caps it, of statistics that could be honest."""
        mean = MeanAggregator({name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in expect.specs.items()})
        return _Checked(capped(mean, caps), self)

    def round_config(self, train: TrainConfig) -> TrainConfig:
        return StatisticsPlan.round_config(train, self.kind)


class _Checked(WrappedAggregator):
    """Refuses statistics no honest client could send (checked, like every update, before they reach the mean)."""

    def __init__(self, inner: Aggregator, rnd: StatisticsRound) -> None:
        super().__init__(inner)
        self.round = rnd

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        why = self.round.problem(update.tensors)
        if why:
            raise UpdateRejected("bad_statistics", f"client {client}'s {self.round.kind} statistics cannot be a client's: {why}")
        return update, weight


class HeadRound(StatisticsRound):
    """Round 1: the closed-form head, solved into the model's Linear head and scaled for a softmax (predictions unchanged)."""

    def __init__(self, net: Network, plan: StatisticsPlan) -> None:
        found = heads.linear_head(net.stages[-1][1])
        if found is None:
            raise ConfigError(f"--head-init {plan.head}: this model's head is {type(net.stages[-1][1]).__name__}, not a Linear layer "
                              "(or Dropout then Linear); use --head-init none")
        self.linear, self.kind, self.ridge_lambda = found[0], plan.head, plan.ridge_lambda

    def specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return heads.specs(self.kind, self.linear.in_features, self.linear.out_features)

    def problem(self, stats: Mapping[str, torch.Tensor]) -> str:
        return heads.problem(stats)

    def apply(self, aggregate: Aggregate) -> str:
        w, b = heads.solve(self.kind, aggregate.tensors, self.ridge_lambda)
        scale = heads.logit_scale(w, b, aggregate.tensors)
        with torch.no_grad():
            self.linear.weight.copy_((w * scale).to(self.linear.weight.dtype))
            self.linear.bias.copy_((b * scale).to(self.linear.bias.dtype))
        what = "ridge" if self.kind == "ridge" else "class-mean"
        return (f"{what} head solved from {aggregate.count} clients' statistics over {int(aggregate.total_weight)} examples "
                f"(logit scale {scale:.3g})")


class BatchNormRound(StatisticsRound):
    """The last round: the trained BatchNorm layers' running statistics over every client's data."""

    kind = "batchnorm"

    def __init__(self, net: Network, first_trainable: int) -> None:
        self.net, self.first_trainable = net, first_trainable

    def specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return batchnorm.specs(self.net, self.first_trainable)

    def problem(self, stats: Mapping[str, torch.Tensor]) -> str:
        return batchnorm.problem(stats)

    def apply(self, aggregate: Aggregate) -> str:
        count = batchnorm.apply(self.net, self.first_trainable, aggregate.tensors)
        return (f"BatchNorm statistics of {count} layers pooled from {aggregate.count} clients over {int(aggregate.total_weight)} "
                "examples")


class StatisticsRounds:
    """Which rounds of the run collect statistics, and what each does with them."""

    def __init__(self, plan: StatisticsPlan, net: Network, first_trainable: int, shared: frozenset[str], rounds: int,
                 caps: Caps | None = None) -> None:
        self.plan, self.rounds, self.caps = plan, rounds, caps
        self.head: HeadRound | None = None
        self.batchnorm: BatchNormRound | None = None
        if plan.head:
            if heads.linear_head(net.stages[-1][1]) is None and plan.head_auto:
                logger.info("--head-init auto: this model's head is %s, not a Linear layer: round 1 trains like the others",
                            type(net.stages[-1][1]).__name__)
            else:
                self.head = HeadRound(net, plan)
        if plan.batchnorm:
            found = batchnorm.layers(net, first_trainable)
            if found and all(f"{name}.running_mean" in shared for name in found):
                self.batchnorm = BatchNormRound(net, first_trainable)
            elif not plan.batchnorm_auto:
                raise ConfigError("--batchnorm pool: the trained part of this model has no BatchNorm layer whose statistics the "
                                  "clients share; use --batchnorm average")

    @property
    def clients(self) -> int:
        return self.plan.clients

    def for_round(self, number: int) -> StatisticsRound | None:
        if number == 1 and self.head is not None:
            return self.head
        if number == self.rounds and self.batchnorm is not None:
            return self.batchnorm
        return None
