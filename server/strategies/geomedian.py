"""Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2022): the point minimising the
weighted sum of Euclidean distances to the updates; a minority of outliers barely moves it."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.stacked import Groups, StackedRule, blocks, weighted_average


def distances_to(rows: np.ndarray, point: np.ndarray) -> np.ndarray:
    out = np.zeros(rows.shape[0])
    for cols in blocks(rows.shape[1], rows.shape[0]):
        out += ((np.asarray(rows[:, cols], dtype=np.float64) - point[cols]) ** 2).sum(axis=1)
    return np.sqrt(out)


def geometric_median(rows: np.ndarray, weights: np.ndarray, iterations: int = 20, smoothing: float = 1e-6,
                     tolerance: float = 1e-7) -> np.ndarray:
    point = weighted_average(rows, weights)
    for _ in range(iterations):
        beta = weights / np.maximum(smoothing, distances_to(rows, point))
        moved = weighted_average(rows, beta)
        step = np.linalg.norm(moved - point)
        point = moved
        if step <= tolerance * max(1.0, float(np.linalg.norm(point))):
            break
    return point


class GeometricMedian(StackedRule):
    name = "geomedian"

    def __init__(self, weighted: bool = False, iterations: int = 20, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.weighted, self.iterations = weighted, iterations

    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> GeometricMedian:
        return cls(weighted=s.weighted_rule, **kw)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        return geometric_median(rows, weights if self.weighted else np.ones(len(weights)), self.iterations)

    def describe(self) -> str:
        return f"geometric median{' (weighted)' if self.weighted else ''}"
