"""Bulyan (El Mhamdi et al. 2018): pick theta = n - 2f updates by repeated Krum, then for every coordinate
average the beta = theta - 2f values closest to their median. Needs n >= 4f + 3."""

from __future__ import annotations

import numpy as np

from fedtl.server.strategies.krum import krum_scores
from fedtl.server.strategies.stacked import AggregationError, Groups, StackedRule, blocks, squared_distances


class Bulyan(StackedRule):
    name = "bulyan"

    def __init__(self, byzantine: int = 1, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.f = byzantine


    def needed(self) -> int:
        return 4 * self.f + 3

    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        n, f = rows.shape[0], self.f
        if n < 4 * f + 3:
            raise AggregationError(f"Bulyan with --byzantine {f} needs at least {4 * f + 3} updates a round, got {n}")
        distances = squared_distances(rows, groups)
        remaining = list(range(n))
        chosen: list[int] = []
        while len(chosen) < n - 2 * f:
            sub = distances[np.ix_(remaining, remaining)]
            best = remaining[int(np.argmin(krum_scores(sub, f, strict=False)))]
            chosen.append(best)
            remaining.remove(best)
        beta = len(chosen) - 2 * f
        selected = np.sort(np.asarray(chosen))
        out = np.zeros(rows.shape[1])
        for cols in blocks(rows.shape[1], len(selected)):
            block = np.asarray(rows[selected][:, cols], dtype=np.float64)
            median = np.median(block, axis=0)
            closest = np.argsort(np.abs(block - median), axis=0, kind="stable")[:beta]
            out[cols] = np.take_along_axis(block, closest, axis=0).mean(axis=0)
        return out

    def describe(self) -> str:
        return f"bulyan, f={self.f}"
