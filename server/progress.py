"""How slowly a transfer may move: a deadline for its next piece, so a stalled or trickling peer loses its slot.

Each piece must come within `stall` seconds of the last, and once `stall` seconds have passed the
transfer must have averaged at least `rate` bytes a second: the deadline for the next piece is the
sooner of the two. A peer sending one byte every few seconds cannot hold a slot for long either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fedtl.common.errors import FedError
from fedtl.server.clock import Clock

T = TypeVar("T")
Piece = bytes | memoryview  # what a transfer's pieces are: received bytes, or views of them


class Stalled(FedError):
    """A transfer moved too slowly; `reason` is counted in the round record."""

    reason = "stalled"


class Progress:
    def __init__(self, clock: Clock, stall: float, rate: float) -> None:
        self.clock, self.stall, self.rate = clock, stall, rate
        self.started = clock.monotonic()
        self.moved = 0

    def deadline(self) -> float:
        now = self.clock.monotonic()
        if not self.rate:
            return now + self.stall
        return min(now + self.stall, self.started + self.stall + self.moved / self.rate)

    def explain(self, what: str) -> str:
        return (f"{what} moved {self.moved} bytes in {self.clock.monotonic() - self.started:.0f}s: slower than one piece every "
                f"{self.stall:g}s and {self.rate:g} bytes/s after that (--stall-timeout, --min-transfer-rate); cut off")


async def within(progress: Progress, step: Awaitable[T], what: str) -> T:
    """The result of `step` (the next read or write of a transfer), if it comes by the progress deadline."""
    task = asyncio.ensure_future(step)
    timer = asyncio.ensure_future(progress.clock.sleep(progress.deadline() - progress.clock.monotonic()))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if not task.done():
        task.cancel()
        raise Stalled(progress.explain(what))
    return task.result()


async def guarded(pieces: AsyncIterator[Piece], progress: Progress, what: str) -> AsyncIterator[Piece]:
    """The pieces of an incoming transfer, each by its deadline."""
    iterator = pieces.__aiter__()
    while True:
        try:
            piece = await within(progress, iterator.__anext__(), what)
        except StopAsyncIteration:
            return
        progress.moved += len(piece)
        yield piece
