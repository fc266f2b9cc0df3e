"""Secure aggregation on the coordinator (docs/secure-aggregation.md): the protocol's state (protocol.py) and the
strategy that sums masked inputs (strategy.py). The settings live here, free of torch, for the flag checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SecAggSettings:
    threshold: int = 0  # 0: 2k/3 + 1 of the k neighbours
    neighbours: int = 0  # 0: everyone (plain SecAgg)
    bits: int = 24  # fixed-point bits per coordinate
    clip: float = 0.0  # L2 bound every client clips its update to
    max_weight: int = 1 << 16  # the most examples an update may count for (1: every update counts the same)
