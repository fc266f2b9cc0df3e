"""Coordinate-wise trimmed mean (Yin et al. 2018): drop the largest and smallest values of every coordinate
(a fraction of the clients, or of the weight), average the rest."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from fedtl.common.errors import ConfigError
from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.stacked import Groups, StackedRule, blocks


def trimmed(values: np.ndarray, fraction: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Per column: the mean after trimming `fraction` from each end (of the count, or of the total weight)."""
    n = values.shape[0]
    ordered = np.sort(values, axis=0) if weights is None else None
    if weights is None:
        k = math.floor(fraction * n)
        return ordered[k : n - k].mean(axis=0)  # type: ignore[index]
    order = np.argsort(values, axis=0, kind="stable")
    w = weights[order]  # n x k, weights in value order
    total = weights.sum()
    cut = fraction * total
    upper = np.cumsum(w, axis=0)
    lower = upper - w
    # each value keeps the part of its weight that lies between cut and total - cut
    kept = np.clip(np.minimum(upper, total - cut) - np.maximum(lower, cut), 0.0, None)
    return (np.take_along_axis(values, order, axis=0) * kept).sum(axis=0) / kept.sum(axis=0)


class TrimmedMean(StackedRule):
    name = "trimmed-mean"

    def __init__(self, fraction: float = 0.1, weighted: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if not 0 <= fraction < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {fraction}")
        self.fraction, self.weighted = fraction, weighted

    flags_title = "--aggregation trimmed-mean"

    @classmethod
    def add_flags(cls, g: argparse._ArgumentGroup) -> None:
        g.add_argument("--trim-fraction", type=float, default=None,
                       help="share of the values dropped at each end of every coordinate (default 0.1)")

    @classmethod
    def options(cls, a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
        fraction = 0.1 if a.trim_fraction is None else a.trim_fraction
        if not 0 <= fraction < 0.5:
            raise ConfigError(f"--trim-fraction must be in [0, 0.5), got {fraction}")
        return {"fraction": fraction}

    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> TrimmedMean:
        return cls(**s.rule_options, weighted=s.weighted_rule, **kw)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        out = np.zeros(rows.shape[1])
        for cols in blocks(rows.shape[1], rows.shape[0]):
            out[cols] = trimmed(np.asarray(rows[:, cols], dtype=np.float64), self.fraction, weights if self.weighted else None)
        return out

    def describe(self) -> str:
        return f"trimmed mean ({self.fraction:g} each side{', weighted' if self.weighted else ''})"
