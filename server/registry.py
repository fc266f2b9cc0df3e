"""Connected clients, and the one home of the partition rule: which shard each client trains on.

A client is identified by its name (stable across restarts), bound on first join to the digest of
the secret identity it keeps in its work directory, and holds one session per connection. A client's
shard is its own for the whole run: a restarted client gets it back and a newcomer only ever gets a
shard nobody had. A client may train on all of its local data (`--partition none`) or on a shard the
operator pinned for it in the tokens file; it cannot claim another. State only (no I/O); the
coordinator calls it from the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedtl.common.config import PARTITION_NONE, PARTITION_SERVER, DataAssignment, Hello, client_name_problem
from fedtl.common.errors import FederationRefused, Overloaded, SessionSuperseded, UnknownSession
from fedtl.server.settings.data import PartitionPlan


@dataclass
class Session:
    name: str
    session_id: str
    hello: Hello
    connected_at: float
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # Instruction or an exception to raise
    downloading: bool = False  # a download stream is open (one at a time)
    address: str = ""  # the peer's network address, without the port ("": unknown)


class Registry:
    def __init__(self, plan: PartitionPlan, *, max_clients: int = 0, per_address: int = 0, pins: Mapping[str, int] | None = None) -> None:
        self.plan = plan
        self.max_clients = max_clients  # 0: no limit
        self.per_address = per_address  # sessions one network address may hold (loopback and unknown exempt); 0: no limit
        self.pins = dict(pins or {})  # client name -> the shard the operator pinned for it
        self._by_name: dict[str, Session] = {}
        self._by_id: dict[str, Session] = {}
        self.partitions: dict[str, int] = {}  # server-assigned partition per client name, for the whole run
        self.partition_count: int | None = None
        self.bindings: dict[str, str] = {}  # client name -> sha256 of the identity it first joined with
        self.last_join = 0.0

    # ---------------------------------------------------------------- sessions

    def connect(self, hello: Hello, now: float, address: str = "") -> tuple[Session, Session | None]:
        """Open a session; a live session with the same name is superseded (returned so it can be told)."""
        problem = client_name_problem(hello.client_name)
        if problem:
            raise FederationRefused(f"{problem} (--name)")
        self._check_identity(hello)
        self._check_shard_claim(hello)
        if self.max_clients and hello.client_name not in self._by_name and len(self._by_name) >= self.max_clients:
            raise Overloaded(f"the server has its {self.max_clients} clients (--max-clients); retry later")
        if self.per_address and shared_address(address) and hello.client_name not in self._by_name and \
                sum(1 for s in self._by_name.values() if s.address == address) >= self.per_address:
            raise Overloaded(f"{address} already has {self.per_address} clients connected (--max-clients-per-address); retry later")
        self._bind(hello)
        old = self._by_name.pop(hello.client_name, None)
        if old is not None:
            self._by_id.pop(old.session_id, None)
        session = Session(hello.client_name, secrets.token_hex(16), hello, now, address=address)
        self._by_name[session.name] = session
        self._by_id[session.session_id] = session
        self.last_join = now
        if old is not None:
            old.outbox.put_nowait(SessionSuperseded(f"a newer connection named {old.name!r} replaced this one; give every client a distinct --name"))
        return session, old

    def _check_identity(self, hello: Hello) -> None:
        bound = self.bindings.get(hello.client_name)
        if bound is not None and bound != _digest(hello.identity):
            raise FederationRefused(
                f"the name {hello.client_name!r} belongs to another client of this run (its identity differs): give this client "
                "its own --name, or, if it is that client, its --workdir as it was (the identity file in it)")

    def _bind(self, hello: Hello) -> None:
        if hello.identity and hello.client_name not in self.bindings:
            self.bindings[hello.client_name] = _digest(hello.identity)

    def _check_shard_claim(self, hello: Hello) -> None:
        if hello.partition_index < 0:
            return  # server-assigned, or all of its own data
        pinned = self.pins.get(hello.client_name)
        if pinned != hello.partition_index or hello.partition_count != self.plan.num_partitions:
            raise FederationRefused(
                f"client {hello.client_name} asks for shard {hello.partition_index}/{hello.partition_count}, but this server assigns "
                "shards: start it with --partition auto (or none, to train on all of its own data); an operator pins shards in "
                "the tokens file (name token shard=I)")

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

    def addresses(self) -> dict[str, str]:
        """Each connected client's network address: selection spreads a round over them (server/selection.py)."""
        return {name: session.address for name, session in self._by_name.items()}

    def __len__(self) -> int:
        return len(self._by_name)

    # ---------------------------------------------------------------- partitions

    def fix_partitions(self, count: int | None = None) -> dict[str, int]:
        """Freeze the number of shards (by default: --num-partitions, else one per client that lets the server
        choose) and hand them to the connected clients in name order (the same shards to the same names on the next run,
        so each finds its feature cache again, whatever order they joined in); returns who got which."""
        auto = sorted(n for n in self._by_name if self._by_name[n].hello.partition_index == PARTITION_SERVER)
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
        return DataAssignment(index, self.partition_count or 1, p.scheme, p.alpha, p.classes_per_client, p.seed,
                              p.holdout_fraction, p.per_class_limit)

    def partition_of(self, name: str) -> int | None:
        """The shard `name` trains on, assigning one the first time; None when there is nothing to assign yet."""
        session = self._by_name.get(name)
        if session is not None and session.hello.partition_index == PARTITION_NONE:
            return None
        if name in self.pins:
            return self.pins[name]
        if name in self.partitions:
            return self.partitions[name]
        if self.partition_count is None:
            return None
        taken = set(self.partitions.values()) | set(self.pins.values())
        free = [i for i in range(self.partition_count) if i not in taken]
        if not free:
            raise FederationRefused(
                f"all {self.partition_count} data shards belong to this run's clients (a restarted client keeps its own); start "
                "the server with a larger --num-partitions, or this client with --partition none to train on all of its own data"
            )
        self.partitions[name] = free[0]
        return free[0]

    # ---------------------------------------------------------------- checkpointed state

    def state(self) -> dict:
        return {"partitions": dict(self.partitions), "partition_count": self.partition_count, "bindings": dict(self.bindings)}

    def restore(self, state: dict) -> None:
        self.partitions = {str(k): int(v) for k, v in state.get("partitions", {}).items()}
        count = state.get("partition_count")
        self.partition_count = None if count is None else int(count)
        self.bindings = {str(k): str(v) for k, v in state.get("bindings", {}).items()}


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest() if identity else ""


def shared_address(address: str) -> bool:
    """An address that says who is behind it, so many sessions from it are one machine's (or one network's): not unknown,
    not loopback (a local federation), not a unix socket."""
    try:
        return bool(address) and not ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
