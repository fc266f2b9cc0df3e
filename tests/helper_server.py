"""The helper (server/helper) on its own event loop in a thread, as `python -m server.helper` runs it, on a free port."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fedtl.server.auth import Authenticator
from fedtl.server.helper.service import serve
from fedtl.server.helper.state import HelperState


class HelperServer:
    def __init__(self, state: HelperState | None = None, clients: Authenticator | None = None, leader_token: str | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.loop, self.ready, self.port = asyncio.new_event_loop(), threading.Event(), 0
        self.stop: asyncio.Event | None = None
        self.args = (state or HelperState(), clients or Authenticator(), leader_token, tls)
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the helper did not start"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        await serve("127.0.0.1:0", *self.args, self.stop, on_ready=self._listening)

    def _listening(self, port: int) -> None:
        self.port = port
        self.ready.set()

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
