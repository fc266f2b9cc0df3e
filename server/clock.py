"""Time for the run loop, injectable: the system clock in a server, a manual one in tests.

Every deadline, grace period and periodic note of the coordinator goes through a Clock, so a test
can move time forward (a round's 600 s deadline passes at once) and await events instead of
sleeping. `Wakeup` is the coordinator's "something changed" signal: waiters are woken by `notify`
or by the clock, whichever comes first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class Clock:
    def monotonic(self) -> float:
        raise NotImplementedError

    def wall(self) -> float:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await self.timer(seconds)

    def timer(self, seconds: float) -> asyncio.Future:
        """A future done `seconds` from now, its deadline fixed at this call (not when a task first runs)."""
        raise NotImplementedError


class SystemClock(Clock):
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timer(self, seconds: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def due() -> None:
            if not future.done():
                future.set_result(None)

        handle = loop.call_later(max(0.0, seconds), due)
        future.add_done_callback(lambda _: handle.cancel())
        return future


class ManualClock(Clock):
    """Time moves only when `advance` is called; sleepers whose deadline passed wake up then."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self.timer(seconds)

    def timer(self, seconds: float) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if seconds <= 0:
            future.set_result(None)
        else:
            heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        return future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())


class Wakeup:
    """A level-free "something changed" signal for the event loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return at the next notify, or after `timeout` seconds of the clock."""
        await first_of(self.clock, timeout, self._event)


async def first_of(clock: Clock, timeout: float | None, *events: asyncio.Event) -> bool:
    """Wait until one of `events` is set or `timeout` passes on `clock`; True when an event was set."""
    if any(e.is_set() for e in events):
        return True
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    timer = clock.timer(timeout) if timeout is not None else None  # its deadline counts from now, even if time moves before it runs
    try:
        await asyncio.wait(waiters | ({timer} if timer else set()), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*waiters, *([timer] if timer else [])]:
            task.cancel()
    return any(e.is_set() for e in events)
