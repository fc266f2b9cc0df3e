"""Bounded trust in example counts around any strategy: each client's weight is at most `cap`,
so a client claiming a huge dataset cannot take most of the aggregate's weight."""

from __future__ import annotations

from typing import Mapping

import torch

from server.strategies.base import Aggregator, RoundContext, WrappedAggregator, Wrapper
from server.validation import Update


class WeightCap(Wrapper):
    def __init__(self, inner, cap: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        if not cap > 0:
            raise ValueError(f"weight cap must be > 0, got {cap}")
        self.cap = cap

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return _Capping(self.inner.open(template, context), self.cap)

    def describe(self) -> str:
        return f"{self.inner.describe()}, weights capped at {self.cap:g} examples"


class _Capping(WrappedAggregator):
    def __init__(self, inner: Aggregator, cap: float) -> None:
        super().__init__(inner)
        self.cap = cap

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        if weight > self.cap:
            self.counted("capped")
            return update, self.cap
        return update, weight
