"""Connected clients and the partition each one trains on. Data only; the coordinator guards it.

A client is identified by its name (stable across restarts), and holds one session per
connection. A rejoining client keeps its partition; a newcomer gets a never-assigned partition,
else one whose owner is gone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

from common.config import PARTITION_NONE, PARTITION_SERVER, Hello
from common.errors import FederationRefused, SessionSuperseded, UnknownSession


@dataclass
class Session:
    name: str
    session_id: str
    hello: Hello
    connected_at: float
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # Instruction or an exception to raise


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, Session] = {}
        self._by_id: dict[str, Session] = {}
        self.partitions: dict[str, int] = {}  # server-assigned partition per client name
        self.partition_count: int | None = None
        self.last_join = 0.0

    # ---------------------------------------------------------------- sessions

    def connect(self, hello: Hello) -> tuple[Session, Session | None]:
        """Open a session; a live session with the same name is superseded (returned so it can be told)."""
        if not hello.client_name or len(hello.client_name) > 128 or not hello.client_name.isprintable():
            raise FederationRefused(f"client name {hello.client_name[:40]!r} must be 1-128 printable characters (--name)")
        old = self._by_name.pop(hello.client_name, None)
        if old is not None:
            self._by_id.pop(old.session_id, None)
        session = Session(hello.client_name, secrets.token_hex(16), hello, time.monotonic())
        self._by_name[session.name] = session
        self._by_id[session.session_id] = session
        self.last_join = session.connected_at
        if old is not None:
            old.outbox.put_nowait(SessionSuperseded(f"a newer connection named {old.name!r} replaced this one; give every client a distinct --name"))
        return session, old

    def disconnect(self, session: Session) -> bool:
        """Forget a session; False when it had already been superseded."""
        if self._by_id.get(session.session_id) is not session:
            return False
        del self._by_id[session.session_id]
        del self._by_name[session.name]
        return True

    def session(self, session_id: str) -> Session:
        try:
            return self._by_id[session_id]
        except KeyError:
            raise UnknownSession(f"session {session_id[:8]}… is not connected (server restarted or connection lost); reconnect") from None

    def by_name(self, name: str) -> Session | None:
        return self._by_name.get(name)

    def connected(self) -> list[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # ---------------------------------------------------------------- partitions

    def fix_partitions(self, count: int) -> None:
        """Freeze the number of shards and hand them to the connected clients in join order."""
        self.partition_count = count
        for name in self._by_name:
            self.partition_of(name)

    def partition_of(self, name: str) -> int | None:
        """The partition `name` trains on, assigning one if needed; None when there is nothing to assign yet."""
        session = self._by_name.get(name)
        if session is not None and session.hello.partition_index == PARTITION_NONE:
            return None
        if session is not None and session.hello.partition_index >= 0:
            return session.hello.partition_index
        if name in self.partitions:
            return self.partitions[name]
        if self.partition_count is None:
            return None
        owners = {index: owner for owner, index in self.partitions.items()}
        free = [i for i in range(self.partition_count) if i not in owners]
        if not free:
            free = [i for i in range(self.partition_count) if owners[i] not in self._by_name]
            if not free:
                raise FederationRefused(
                    f"all {self.partition_count} data partitions belong to connected clients; start the server "
                    "with a larger --num-partitions, or start this client with --partition i/N or --partition none"
                )
            del self.partitions[owners[free[0]]]
        self.partitions[name] = free[0]
        return free[0]

    def wants_server_partition(self, name: str) -> bool:
        session = self._by_name.get(name)
        return session is not None and session.hello.partition_index == PARTITION_SERVER
