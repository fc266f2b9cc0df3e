"""Coordinate-wise median (Yin et al. 2018): every coordinate takes the middle of the clients' values, so a
minority cannot pull it anywhere. Weighted: the value where the cumulative weight reaches half."""

from __future__ import annotations

import numpy as np

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.stacked import Groups, StackedRule, blocks


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column of values (n x k): the lower weighted median (the smallest value whose cumulative weight >= half)."""
    order = np.argsort(values, axis=0, kind="stable")
    cumulative = np.cumsum(weights[order], axis=0)
    index = np.argmax(cumulative >= weights.sum() / 2, axis=0)  # per column: how far down the sorted order
    columns = np.arange(values.shape[1])
    return values[order[index, columns], columns]


class Median(StackedRule):
    name = "median"

    def __init__(self, weighted: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.weighted = weighted

    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: object) -> Median:
        return cls(weighted=s.weighted_rule, **kw)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        out = np.zeros(rows.shape[1])
        for cols in blocks(rows.shape[1], rows.shape[0]):
            block = np.asarray(rows[:, cols], dtype=np.float64)
            out[cols] = weighted_median(block, weights) if self.weighted else np.median(block, axis=0)
        return out

    def describe(self) -> str:
        return f"median{' (weighted)' if self.weighted else ''}"
