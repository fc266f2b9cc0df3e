"""FLTrust (Cao et al., NDSS 2021): the coordinator trains one update of its own on a small clean root set;
each client's update counts by how much it points the same way (ReLU of the cosine), rescaled to the root
update's length. Needs --root-data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext
from fedtl.server.strategies.stacked import AggregationError, Groups, StackedAggregator, StackedRule, UpdateStack, blocks

RootUpdate = Callable[[], Mapping[str, torch.Tensor]]  # the server's own update from the round's global model


def fltrust(rows: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(combined update, trust score per client)."""
    n = rows.shape[0]
    dots, norms = np.zeros(n), np.zeros(n)
    for cols in blocks(rows.shape[1], n):
        block = np.asarray(rows[:, cols], dtype=np.float64)
        dots += block @ root[cols]
        norms += (block**2).sum(axis=1)
    norms = np.sqrt(norms)
    root_norm = float(np.linalg.norm(root))
    trust = np.maximum(0.0, dots / np.maximum(norms * root_norm, 1e-30))
    if not trust.sum() > 0:
        return np.zeros(rows.shape[1]), trust
    scale = trust * root_norm / np.maximum(norms, 1e-30)
    out = np.zeros(rows.shape[1])
    for cols in blocks(rows.shape[1], n):
        out[cols] = scale @ np.asarray(rows[:, cols], dtype=np.float64) / trust.sum()
    return out, trust


class FLTrust(StackedRule):
    name = "fltrust"

    def __init__(self, root_update: RootUpdate | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.root_update = root_update

    resources = ("spill_dir", "root_update")



    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> FLTrust:
        return cls(**kw)  # the root set's options are the coordinator's: it trains the root update (server/root_update.py)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        raise AssertionError("FLTrust combines with the root update: see _Trusting.result")

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        if self.root_update is None:
            raise AggregationError("--aggregation fltrust needs the coordinator's root set (--root-data)")
        return _Trusting(self, UpdateStack(template, self.spill_dir, self.in_memory_bytes), self.root_update)


class _Trusting(StackedAggregator):
    def __init__(self, rule: FLTrust, stack: UpdateStack, root_update: RootUpdate) -> None:
        super().__init__(rule, stack)
        self.root_update = root_update
        self.trust: dict[str, float] = {}

    def result(self) -> Aggregate:
        try:
            if not self.stack.clients:
                raise AggregationError("FLTrust got no updates")
            root = self.root_update()  # on the fold thread, from the model this round sent
            row = np.concatenate([root[n].detach().reshape(-1).double().numpy() for n in self.stack.names])
            combined, trust = fltrust(self.stack.matrix(), row)
            self.trust = dict(zip(self.stack.clients, trust.tolist()))
            return Aggregate(self.stack.tensors(combined), float(sum(self.stack.weights)), len(self.stack.clients),
                             {"untrusted": int((trust == 0).sum())})
        finally:
            self.stack.close()
