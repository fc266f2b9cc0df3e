"""How fast clients may join: token buckets per peer address and for the whole server.

A join is one Connect; a client that reconnects after a network blip joins again, so the buckets allow
bursts. A refused join costs the server no session; the client retries with backoff. Addresses are
remembered in a bounded table (the least recently seen are forgotten), so a flood of addresses cannot
grow the server's memory without bound.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class JoinLimiter:
    def __init__(self, per_address: float, total: float, burst_seconds: float = 5.0, max_addresses: int = 10_000) -> None:
        """`per_address` and `total` joins per second (0: unlimited); bursts of `burst_seconds` worth are allowed."""
        self.per_address, self.total = per_address, total
        self.burst_seconds = burst_seconds
        self.max_addresses = max_addresses
        self._addresses: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._all: _Bucket | None = None

    def admit(self, address: str, now: float) -> str | None:
        """None when the join may go ahead, else why not (for the refusal)."""
        if self.total:
            if self._all is None:
                self._all = _Bucket(self.total * self.burst_seconds, now)
            if not self._all.take(now, self.total, max(1.0, self.total * self.burst_seconds)):
                return f"the server takes at most {self.total:g} joins a second (--join-rate-total); retry shortly"
        if self.per_address:
            bucket = self._addresses.pop(address, None) or _Bucket(self.per_address * self.burst_seconds, now)
            self._addresses[address] = bucket  # most recently seen last
            while len(self._addresses) > self.max_addresses:
                self._addresses.popitem(last=False)
            if not bucket.take(now, self.per_address, max(1.0, self.per_address * self.burst_seconds)):
                return f"at most {self.per_address:g} joins a second come from one address (--join-rate); retry shortly"
        return None


def address_of(peer: str) -> str:
    """gRPC's peer string ('ipv4:10.0.0.5:50312', 'ipv6:[::1]:50312', 'unix:...') without the port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer
