"""Reconnect delays: exponential, capped, full jitter (AWS architecture blog, 2015). Pure: inject the rng."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, rng: random.Random | None = None) -> Iterator[float]:
    """Yield an endless series of waits: uniform in [0, min(maximum, initial * factor**attempt)]."""
    if not 0 < initial <= maximum or factor < 1:
        raise ValueError("need 0 < initial <= maximum and factor >= 1")
    rng = rng or random.Random()
    ceiling = initial
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(maximum, ceiling * factor)
