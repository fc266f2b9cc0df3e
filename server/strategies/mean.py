"""The weighted mean, streamed: FedAvg's and FedSGD's rule. Pure torch: no I/O, no clocks.

Updates fold into one float64 running sum as they arrive, so memory is one accumulator whatever
the number of clients, and the result does not depend (beyond float64 rounding) on the order
updates arrive in: an interrupted and resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, Rule
from fedtl.server.strategies.stacked import AggregationError
from fedtl.server.validation import Update

# Fold in slices that stay in cache: a whole-tensor float32 -> float64 promotion is ~25x slower.
_FOLD_SLICE = 1 << 18


class Accumulator:
    """Running weighted sum: add(tensors, weight) for each client, then mean()."""

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self._sums = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in template.items()}
        self._scratch = torch.empty(_FOLD_SLICE, dtype=torch.float64)
        self.total_weight: float = 0
        self.count = 0

    def add(self, update: Mapping[str, torch.Tensor], weight: float, support: Mapping[str, torch.Tensor] | None = None) -> None:
        """`support`: for sparse-coded tensors, the flat indices that may be non-zero (folded in O(k))."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if update.keys() != self._sums.keys():
            raise ValueError("update names differ from the accumulator's")
        for name, total in self._sums.items():
            indices = support.get(name) if support else None
            if indices is not None:
                flat = update[name].reshape(-1)
                total.view(-1).index_add_(0, indices, flat[indices].to(torch.float64), alpha=float(weight))
            else:
                _fold(total.view(-1), update[name].reshape(-1), float(weight), self._scratch)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no update was added")
        return {name: total / self.total_weight for name, total in self._sums.items()}


def _fold(total: torch.Tensor, update: torch.Tensor, weight: float, scratch: torch.Tensor) -> None:
    if update.dtype == torch.float64:
        total.add_(update, alpha=weight)
        return
    for start in range(0, update.numel(), _FOLD_SLICE):
        piece = update[start : start + _FOLD_SLICE]
        buf = scratch[: piece.numel()]
        buf.copy_(piece)
        total[start : start + piece.numel()].add_(buf, alpha=weight)


def weighted_mean(updates: list[tuple[Mapping[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """Batch reference for the streaming Accumulator (tests and the benchmark)."""
    total = sum(n for _, n in updates)
    names = updates[0][0].keys()
    return {k: torch.stack([u[k].double() * n for u, n in updates]).sum(0) / total for k in names}


class MeanAggregator(Aggregator):
    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self.accumulator = Accumulator(template)

    def add(self, client: str, update: Update, weight: float) -> None:
        self.accumulator.add(update.tensors, weight, update.support)

    def result(self) -> Aggregate:
        acc = self.accumulator
        if acc.count == 0:  # every answer was refused while it folded (an empty shard's, say): like too few answers
            raise AggregationError("no update could be folded into the mean")
        return Aggregate(acc.mean(), acc.total_weight, acc.count)

    @property
    def count(self) -> int:
        return self.accumulator.count


class Mean(Rule):
    """The example-weighted mean of the updates (FedAvg: McMahan et al. 2017)."""

    name = "mean"

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return MeanAggregator(template)
