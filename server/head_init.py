"""A closed-form head in the run's first round (common/heads.py): every connected client sends the means of its head
statistics on the initial backbone, the coordinator pools them (example-weighted, float64) and solves the head, which
then equals the head the same solve gives on all their data pooled, however the data is split. When it runs is
`--head-init` (server/settings/head.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.errors import ConfigError
from fedtl.common.models import Network
from fedtl.server.settings.head import HeadInit
from fedtl.server.strategies.base import Aggregate
from fedtl.server.strategies.mean import MeanAggregator
from fedtl.server.validation import Expectation

logger = logging.getLogger(__name__)


def for_run(head: HeadInit, net: Network) -> HeadStatisticsRound | None:
    """Round 1's statistics, when --head-init asks for them and the model's head can take them."""
    from fedtl.common.heads import linear_head

    if not head.kind:
        return None
    if linear_head(net.stages[-1][1]) is None and head.auto:
        logger.info("--head-init auto: this model's head is %s, not a Linear layer: round 1 trains like the others",
                    type(net.stages[-1][1]).__name__)
        return None
    return HeadStatisticsRound(net, head)


def solve_into(kind: str, ridge_lambda: float, stats: Mapping[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Write the solved head into the model's Linear head (scaled for a softmax, predictions unchanged); returns the scale."""
    from fedtl.common import heads

    w, b = heads.solve(kind, stats, ridge_lambda)
    scale = heads.logit_scale(w, b, stats)
    with torch.no_grad():
        weight.copy_((w * scale).to(weight.dtype))
        bias.copy_((b * scale).to(bias.dtype))
    return scale


class HeadStatisticsRound:
    """What round 1 expects and does when it collects statistics: the tensors each client sends, their pooled mean, and
    the head solved from it. Every client connected when it opens is asked (the head is then exact for all of them)."""

    def __init__(self, net: Network, head: HeadInit) -> None:
        from fedtl.common.heads import linear_head

        found = linear_head(net.stages[-1][1])
        if found is None:
            raise ConfigError(f"--head-init {head.kind}: this model's head is {type(net.stages[-1][1]).__name__}, not a Linear layer "
                              "(or Dropout then Linear); use --head-init none")
        self.linear = found[0]
        self.head = head

    def expectation(self, number: int, base: str, max_examples: int) -> Expectation:
        from fedtl.common import heads

        specs = heads.specs(self.head.kind, self.linear.in_features, self.linear.out_features)
        return Expectation(number, base, UpdateKind.HEAD_STATISTICS, specs, frozenset(), max_examples)

    @staticmethod
    def aggregator(expect: Expectation) -> MeanAggregator:
        return MeanAggregator({name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in expect.specs.items()})

    def round_config(self, train: TrainConfig) -> TrainConfig:
        return self.head.round_config(train)

    def apply(self, aggregate: Aggregate) -> str:
        """Solve the head into the global model; what was done, for the log."""
        scale = solve_into(self.head.kind, self.head.ridge_lambda, aggregate.tensors, self.linear.weight, self.linear.bias)
        what = "ridge" if self.head.kind == "ridge" else "class-mean"
        return (f"{what} head solved from {aggregate.count} clients' statistics over {int(aggregate.total_weight)} examples "
                f"(logit scale {scale:.3g})")
