"""Wrappers: a strategy around another (norm bounds, weighting, client-level DP, secure aggregation) that changes
what it needs to and delegates the rest, and the aggregator that goes with one."""

from __future__ import annotations

import abc
from collections.abc import Mapping

import torch

from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, Strategy
from fedtl.server.validation import Expectation, Update


class Wrapper(Strategy):
    """Delegates everything to `inner`; subclasses override what they change (usually `open`)."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def expectation(self, base: Expectation) -> Expectation:
        return self.inner.expectation(base)

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return self.inner.open(template, context)

    def apply(self, weights: Mapping[str, torch.Tensor], aggregate: Aggregate, context: RoundContext) -> None:
        self.inner.apply(weights, aggregate, context)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    def describe(self) -> str:
        return self.inner.describe()


class WrappedAggregator(Aggregator):
    """An aggregator that changes each update (or its weight) before the inner one folds it."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.protocol = inner.protocol
        self._counts: dict[str, int] = {}

    def expectation(self, base: Expectation) -> Expectation:
        return self.inner.expectation(base)

    def add(self, client: str, update: Update, weight: float) -> None:
        update, weight = self.transform(client, update, weight)
        self.inner.add(client, update, weight)

    @abc.abstractmethod
    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]: ...

    def result(self) -> Aggregate:
        aggregate = self.inner.result()
        aggregate.stats = self.stats()
        return aggregate

    @property
    def count(self) -> int:
        return self.inner.count

    def stats(self) -> dict[str, int]:
        merged = dict(self.inner.stats())
        for key, value in self._counts.items():
            merged[key] = merged.get(key, 0) + value
        return merged

    def counted(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
