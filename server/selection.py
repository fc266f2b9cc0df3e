"""Which clients train this round: a seeded, reproducible sample of the connected ones. Pure."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable


def round_size(count: int, fraction: float, connected: int, min_fit: int) -> int:
    """`count` clients (0: all), or `fraction` of the connected ones; never below min_fit nor above connected."""
    if fraction > 0:
        wanted = math.ceil(fraction * connected)
    else:
        wanted = count or connected
    return min(connected, max(wanted, min_fit))


def with_over_selection(target: int, over_select: float, connected: int) -> int:
    """How many to ask so that `target` answers are likely even if some drop out."""
    return min(connected, target + math.ceil(target * over_select))


def select_clients(candidates: Iterable[str], count: int, rng: random.Random) -> list[str]:
    """Sample `count` names without replacement; sorted input makes it independent of join order."""
    pool = sorted(set(candidates))
    if count >= len(pool):
        return pool
    return sorted(rng.sample(pool, count))
