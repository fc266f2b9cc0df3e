"""Statistics rounds: every connected client (up to --statistics-clients) sends the float64 means of some statistics of
its data on the global model, the coordinator pools them by the example-weighted mean (the same means over the union
of their data, whatever the split) and writes what they determine into the model instead of taking a training step.

- round 1 under `--head-init`: a closed-form head (common/heads.py), equal to the same solve on the pooled data (under
  record-level DP, class means of noised sums: each client spends its own budget on them, client/privacy.py); under
  `--secure-aggregation` the statistics are masked (the coordinator learns only their weighted mean), in fixed point as
  wide as the 64-bit sum allows, over a range that clipping each example's features (`--head-feature-clip`) bounds;
- the last round under `--batchnorm pool`: BatchNorm running statistics over every client's data (common/batchnorm.py).
When they run is server/settings/statistics.py.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping

import torch

from fedtl.common import batchnorm, heads
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.errors import ConfigError, UpdateRejected
from fedtl.common.models import Network
from fedtl.common.secagg import fixedpoint
from fedtl.server.secagg.strategy import MaskedSum, masked_sum
from fedtl.server.settings.statistics import StatisticsPlan
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext
from fedtl.server.strategies.mean import MeanAggregator
from fedtl.server.strategies.stacked import AggregationError
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
    def problem(self, stats: Mapping[str, torch.Tensor], tolerance: float = 1e-6) -> str:
        """Why these statistics cannot be an honest client's ("" when they can)."""

    def expectation(self, number: int, base: str, max_examples: int) -> Expectation:
        return Expectation(number, base, UpdateKind.STATISTICS, self.specs(), frozenset(), max_examples)

    def template(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in self.specs().items()}

    def aggregator(self, context: RoundContext, caps: Caps | None = None) -> Aggregator:
        """The example-weighted mean, each claim capped as `--weighting capped` caps it, of statistics that could be honest."""
        return _Checked(capped(MeanAggregator(self.template()), caps), self)


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


class _SecurelyChecked(WrappedAggregator):
    """A secure round's masked sum, whose pooled statistics must still be possible (a client's corrupted input, within the
    fixed-point range, can only move the mean, but it must not turn it into statistics no data has): else it fails closed."""

    def __init__(self, inner: MaskedSum, rnd: StatisticsRound) -> None:
        super().__init__(inner)
        self.round, setup = rnd, inner.setup
        self.tolerance = max(1e-6, 4 * 2 * setup.clip / (2**setup.bits - 1))  # a few fixed-point steps: the rounding's reach

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        return update, weight  # masked words: nothing to check one by one

    def result(self) -> Aggregate:
        aggregate = super().result()
        why = self.round.problem(aggregate.tensors, self.tolerance)
        if why:
            raise AggregationError(f"the securely pooled {self.round.kind} statistics cannot come from clients' data ({why}): "
                                   "a client sent a corrupted masked input; nothing was applied")
        return aggregate


class HeadRound(StatisticsRound):
    """Round 1: the closed-form head, solved into the model's Linear head and scaled for a softmax (predictions unchanged)."""

    def __init__(self, net: Network, plan: StatisticsPlan) -> None:
        found = heads.linear_head(net.stages[-1][1])
        if found is None:
            raise ConfigError(f"--head-init {plan.head}: this model's head is {type(net.stages[-1][1]).__name__}, not a Linear layer "
                              "(or Dropout then Linear); use --head-init none")
        self.linear, self.kind, self.ridge_lambda = found[0], plan.head, plan.ridge_lambda
        self.secure, self.feature_clip = plan.secure, plan.feature_clip
        self.noised = bool(plan.dp_share)  # record-level DP: the clients' statistics are noised, so any finite ones may be honest

    def aggregator(self, context: RoundContext, caps: Caps | None = None) -> Aggregator:
        if self.secure is None:
            return super().aggregator(context, caps)
        # as many bits as the 64-bit sum allows, over the range no honest client's statistics leave; example weights
        # (capped like any secure update) even where training rounds weigh clients alike: the pooled mean needs them
        weight = self.secure.max_weight if self.secure.max_weight > 1 else 1 << 16
        n = len(context.participants)
        settings = dataclasses.replace(self.secure, bits=fixedpoint.widest_bits(n, weight), max_weight=weight,
                                       clip=heads.bound(self.kind, self.feature_clip) * (1 + 1e-9))
        return _SecurelyChecked(masked_sum(settings, self.template(), context), self)

    def specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return heads.specs(self.kind, self.linear.in_features, self.linear.out_features)

    def problem(self, stats: Mapping[str, torch.Tensor], tolerance: float = 1e-6) -> str:
        return heads.problem(stats, float("inf") if self.noised else tolerance)

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

    def problem(self, stats: Mapping[str, torch.Tensor], tolerance: float = 1e-6) -> str:
        return batchnorm.problem(stats, tolerance)

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

    def round_config(self, rnd: StatisticsRound, train: TrainConfig) -> TrainConfig:
        return self.plan.round_config(train, rnd.kind)

    def for_round(self, number: int) -> StatisticsRound | None:
        if number == 1 and self.head is not None:
            return self.head
        if number == self.rounds and self.batchnorm is not None:
            return self.batchnorm
        return None
