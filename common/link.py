"""A simulated slow link: a token bucket that paces a stream of messages to a bit rate (`--simulate-link`).

It sits in the client's transport, so every byte of a download or upload waits for its tokens as it
would behind a site's real uplink; benchmarks measure time to accuracy through it (bench/compression).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

M = TypeVar("M")


class TokenBucket:
    def __init__(self, bits_per_second: float, burst_bytes: int = 16 * 1024,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not bits_per_second > 0:
            raise ValueError(f"a link needs a positive rate, got {bits_per_second} bit/s")
        self.rate = bits_per_second / 8  # bytes a second
        self.burst = burst_bytes
        self.clock, self.sleep = clock, sleep
        self.tokens = float(burst_bytes)
        self.last = clock()

    def take(self, nbytes: int) -> None:
        """Spend `nbytes`; when that leaves the bucket in debt, wait until the debt is paid."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - nbytes
        self.last = now
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


def paced(messages: Iterator[M], bucket: TokenBucket | None) -> Iterator[M]:
    """The messages, each released once the link could have carried it (unchanged when there is no bucket)."""
    for message in messages:
        if bucket is not None and isinstance(message, (bytes, bytearray, memoryview)):
            bucket.take(len(message))
        yield message


def parse_link(text: str) -> tuple[float, float]:
    """'UP/DOWN' in Mbit/s (e.g. '10/50') -> (up, down) in bit/s."""
    try:
        up, down = (float(x) * 1e6 for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--simulate-link {text!r}: give UP/DOWN in Mbit/s, e.g. 10/50") from None
    if not (up > 0 and down > 0):
        raise ValueError(f"--simulate-link {text!r}: both rates must be positive")
    return up, down
