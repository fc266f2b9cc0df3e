"""Connected clients, and the one home of the partition rule: which shard each client trains on.

A client is identified by its name (stable across restarts) and holds one session per connection.
A rejoining client keeps its partition; a newcomer gets a never-assigned partition, else one whose
owner is gone. A client may instead bring its own `i/N` shard or all of its local data (`none`).
State only (no I/O); the coordinator calls it from the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from common.config import PARTITION_NONE, PARTITION_SERVER, DataAssignment, Hello, client_name_problem
from common.errors import FederationRefused, SessionSuperseded, UnknownSession
from server.config import PartitionPlan


@dataclass
class Session:
    name: str
    session_id: str
    hello: Hello
    connected_at: float
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # Instruction or an exception to raise


class Registry:
    def __init__(self, plan: PartitionPlan) -> None:
        self.plan = plan
        self._by_name: dict[str, Session] = {}
        self._by_id: dict[str, Session] = {}
        self.partitions: dict[str, int] = {}  # server-assigned partition per client name
        self.partition_count: int | None = None
        self.last_join = 0.0

    # ---------------------------------------------------------------- sessions

    def connect(self, hello: Hello, now: float) -> tuple[Session, Session | None]:
        """Open a session; a live session with the same name is superseded (returned so it can be told)."""
        problem = client_name_problem(hello.client_name)
        if problem:
            raise FederationRefused(f"{problem} (--name)")
        old = self._by_name.pop(hello.client_name, None)
        if old is not None:
            self._by_id.pop(old.session_id, None)
        session = Session(hello.client_name, secrets.token_hex(16), hello, now)
        self._by_name[session.name] = session
        self._by_id[session.session_id] = session
        self.last_join = now
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
            raise UnknownSession(f"session {session_id[:8]!r}… is not connected (server restarted or connection lost); reconnect") from None

    def by_name(self, name: str) -> Session | None:
        return self._by_name.get(name)

    def connected(self) -> list[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # ---------------------------------------------------------------- partitions

    def fix_partitions(self, count: int | None = None) -> dict[str, int]:
        """Freeze the number of shards (by default: --num-partitions, else one per client that lets the server
        choose) and hand them to the connected clients in join order; returns who got which."""
        auto = [n for n in self._by_name if self._by_name[n].hello.partition_index == PARTITION_SERVER]
        self.partition_count = count or self.plan.num_partitions or max(1, len(auto))
        return {name: index for name in auto if (index := self.partition_of(name)) is not None}

    def assignment(self, name: str) -> DataAssignment | None:
        """What `name` trains on; None until the shard count is fixed (before round 1)."""
        p = self.plan
        session = self._by_name.get(name)
        if session is not None and session.hello.partition_index == PARTITION_NONE:
            return DataAssignment(scheme="none", seed=p.seed, holdout_fraction=p.holdout_fraction)
        index = self.partition_of(name)
        if index is None:
            return None
        own = session is not None and session.hello.partition_index >= 0
        count = session.hello.partition_count if own and session is not None else self.partition_count
        return DataAssignment(index, count or 1, p.scheme, p.alpha, p.classes_per_client, p.seed, p.holdout_fraction, p.per_class_limit)

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

    # ---------------------------------------------------------------- checkpointed state

    def state(self) -> dict:
        return {"partitions": dict(self.partitions), "partition_count": self.partition_count}

    def restore(self, state: dict) -> None:
        self.partitions = {str(k): int(v) for k, v in state.get("partitions", {}).items()}
        count = state.get("partition_count")
        self.partition_count = None if count is None else int(count)
