"""How much each update counts, around any strategy: the examples a client claims (bounded), the same for
everyone, or the claims capped, so no client takes most of the weight by claiming a huge dataset.

Caps are per client and known when its update arrives (the streaming mean folds it at once): `--weight-cap`,
else the number of training examples in the shard the coordinator assigned it (computed from the shared
training split, as the client computes its own), else, for a client on its own data, the largest such shard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fedtl.common.errors import UpdateRejected
from fedtl.server.strategies.base import Aggregator, RoundContext
from fedtl.server.strategies.wrapping import WrappedAggregator, Wrapper
from fedtl.server.validation import Update

Caps = Callable[[str], float | None]  # client -> the most examples it may count for (None: no cap known)


class Weighting(Wrapper):
    def __init__(self, inner, mode: str, caps: Caps | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        if mode not in ("examples", "uniform", "capped"):
            raise ValueError(f"weighting {mode!r}")
        self.mode, self.caps = mode, caps

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return _Weighted(self.inner.open(template, context), self.mode, self.caps)

    def describe(self) -> str:
        return f"{self.inner.describe()}, weights: {self.mode}"


class _Weighted(WrappedAggregator):
    def __init__(self, inner: Aggregator, mode: str, caps: Caps | None) -> None:
        super().__init__(inner)
        self.mode, self.caps = mode, caps

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        if self.mode == "uniform":
            return update, 1.0
        if self.mode == "capped" and self.caps is not None:
            cap = self.caps(client)
            if cap is not None and cap < 1:  # more shards than examples: this client's is empty, it trained on nothing
                raise UpdateRejected("empty_shard", f"client {client}'s shard holds no training examples (more shards than examples: "
                                                    "lower --num-partitions or give the federation more data); its update counts for nothing")
            if cap is not None and weight > cap:
                self.counted("capped")
                return update, cap
        return update, weight


def capped(inner: Aggregator, caps: Caps | None) -> Aggregator:
    """`inner` with each claim capped as `--weighting capped` does (statistics rounds: honest claims are the shards' sizes,
    so the pooled means stay exact)."""
    return _Weighted(inner, "capped", caps)
