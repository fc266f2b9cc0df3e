"""Coordinate-wise trimmed mean (Yin et al. 2018): drop the largest and smallest values of every coordinate
(a fraction of the clients, or of the weight), average the rest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.stacked import Groups, StackedRule, blocks


def trim_count(n: int, fraction: float, at_least: int = 0) -> int:
    """Values dropped at each end of a column of `n`: `fraction` of them, at least `at_least`, always keeping one."""
    return max(0, min(max(math.floor(fraction * n), at_least), (n - 1) // 2))


def trimmed(values: np.ndarray, fraction: float, weights: np.ndarray | None = None, at_least: int = 0) -> np.ndarray:
    """Per column: the mean after trimming `fraction` from each end (of the count, or of the total weight), and at
    least `at_least` clients' worth (unweighted: values; weighted: the heaviest clients' weight) while any is kept."""
    n = values.shape[0]
    ordered = np.sort(values, axis=0) if weights is None else None
    if weights is None:
        k = trim_count(n, fraction, at_least)
        return ordered[k : n - k].mean(axis=0)  # type: ignore[index]
    order = np.argsort(values, axis=0, kind="stable")
    w = weights[order]  # n x k, weights in value order
    total = weights.sum()
    heaviest = float(np.sort(weights)[::-1][:at_least].sum()) if at_least and n > 2 else 0.0
    cut = min(max(fraction * total, heaviest), total / 2 * (1 - 1e-9))  # something is always kept
    upper = np.cumsum(w, axis=0)
    lower = upper - w
    # each value keeps the part of its weight that lies between cut and total - cut
    kept = np.clip(np.minimum(upper, total - cut) - np.maximum(lower, cut), 0.0, None)
    return (np.take_along_axis(values, order, axis=0) * kept).sum(axis=0) / kept.sum(axis=0)


class TrimmedMean(StackedRule):
    name = "trimmed-mean"

    def __init__(self, fraction: float = 0.1, weighted: bool = False, at_least: int = 0, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if not 0 <= fraction < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {fraction}")
        self.fraction, self.weighted, self.at_least = fraction, weighted, at_least




    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> TrimmedMean:
        return cls(**s.rule_options, weighted=s.weighted_rule, **kw)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        out = np.zeros(rows.shape[1])
        for cols in blocks(rows.shape[1], rows.shape[0]):
            out[cols] = trimmed(np.asarray(rows[:, cols], dtype=np.float64), self.fraction, weights if self.weighted else None,
                                self.at_least)
        return out

    def describe(self) -> str:
        least = " and at least 1 client" if self.at_least else ""
        return (f"trimmed mean ({self.fraction:g} each side{least}{', weighted' if self.weighted else ''}: with n updates it outvotes "
                f"up to max({self.at_least}, floor({self.fraction:g} n)) attackers at each coordinate, keeping at least one value)")
