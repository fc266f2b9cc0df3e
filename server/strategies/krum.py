"""Krum and Multi-Krum (Blanchard et al. 2017): score each update by the squared distances to its n - f - 2
nearest others; Krum takes the best one, Multi-Krum averages the best m. Needs n >= 2f + 3."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.stacked import AggregationError, Groups, StackedRule, squared_distances, weighted_average


def krum_scores(distances: np.ndarray, f: int, strict: bool = True) -> np.ndarray:
    """Sum of squared distances to the n - f - 2 nearest others (at least 1 when not `strict`, as Bulyan's last picks need)."""
    n = distances.shape[0]
    k = n - f - 2 if strict else max(1, n - f - 2)
    if k < 1:
        raise AggregationError(f"Krum with --byzantine {f} needs at least {2 * f + 3} updates a round, got {n}")
    nearest = np.sort(distances + np.diag(np.full(n, np.inf)), axis=1)[:, :k]
    return nearest.sum(axis=1)


def krum_select(rows: np.ndarray, f: int, m: int, groups: Groups = ()) -> np.ndarray:
    """Indexes of the m best-scored updates (ties broken by position)."""
    return np.argsort(krum_scores(squared_distances(rows, groups), f), kind="stable")[:m]


class Krum(StackedRule):
    name = "krum"

    def __init__(self, byzantine: int = 1, select: int = 1, weighted: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.f, self.m, self.weighted = byzantine, max(1, select), weighted




    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> Krum:
        return cls(**s.rule_options, weighted=s.weighted_rule, **kw)

    def needed(self) -> int:
        return max(2 * self.f + 3, self.m)

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        chosen = np.sort(krum_select(rows, self.f, self.m, groups))
        picked = rows[chosen]
        return weighted_average(picked, weights[chosen] if self.weighted else np.ones(len(chosen)))

    def describe(self) -> str:
        kind = "krum" if self.m == 1 else f"multi-krum (best {self.m})"
        return f"{kind}, f={self.f}{', weighted' if self.weighted else ''}"
