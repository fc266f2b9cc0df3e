"""An event sink for tests, in one module (as any new sink is): it keeps every event in order and lets a test
await the next event of a kind instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fedtl.server.events import Event

E = TypeVar("E", bound=Event)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    async def wait_for(self, kind: type[E], where: Callable[[E], bool] = lambda e: True, timeout: float = 30.0) -> E:
        """The first event of `kind` (already seen or still to come) that satisfies `where`."""
        async def find() -> E:
            while True:
                for event in self.of(kind):
                    if where(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)
