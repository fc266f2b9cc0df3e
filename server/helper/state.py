"""The helper's side of validated aggregation, without I/O: deposits, then per round the leader's bind, open and sum.

What the helper holds is bounded: one 32-byte seed per client for the rounds not yet bound (at most `max_clients` a
round and `rounds_ahead` rounds), and the expanded shares of one round's clients while the leader checks them. It never holds a value of a
client's input: its share of each is pseudorandom, and the openings it answers are blinded (common/validated_sum).
"""

from __future__ import annotations

import threading

import numpy as np

from fedtl.common.errors import UpdateRejected
from fedtl.common.validated_sum import field, proof
from fedtl.common.validated_sum.proof import Challenge, Party, Shape

MAX_CLIENT_NAME = 128


class HelperState:
    def __init__(self, max_clients: int = 1000, rounds_ahead: int = 3) -> None:
        self.max_clients, self.rounds_ahead = max_clients, rounds_ahead
        self._seeds: dict[int, dict[str, bytes]] = {}  # round -> client -> seed
        self._bound_round = 0  # the last round the leader bound
        self._parties: dict[str, Party] = {}  # the bound round's clients
        self._shape: Shape | None = None
        self._lock = threading.Lock()  # gRPC handlers may run on several threads; nothing blocks under it

    def deposit(self, round_number: int, client: str, seed: bytes) -> None:
        """Keep a client's seed for a round not yet bound. At most `rounds_ahead` rounds wait at once: a round below every
        waiting one (the one under way) evicts the highest, so seeds parked for far-off rounds cannot crowd it out."""
        if len(seed) != proof.SEED_BYTES or not client or len(client) > MAX_CLIENT_NAME:
            raise UpdateRejected("malformed", f"a deposit is a {proof.SEED_BYTES}-byte seed from a named client")
        with self._lock:
            if round_number < self._bound_round:
                raise UpdateRejected("stale_round", f"round {round_number} is over here (the leader bound round {self._bound_round})")
            if round_number not in self._seeds and len(self._seeds) >= self.rounds_ahead:
                highest = max(self._seeds)
                if round_number > highest:
                    raise UpdateRejected("round_closed", f"round {round_number} is not open here: {len(self._seeds)} earlier rounds wait")
                del self._seeds[highest]
            seeds = self._seeds.setdefault(round_number, {})
            if client not in seeds and len(seeds) >= self.max_clients:
                raise UpdateRejected("round_closed", f"round {round_number} holds {self.max_clients} deposits already")
            seeds[client] = seed  # a client that trains the round again deposits again: the latest counts

    def bind(self, round_number: int, shape: Shape, clients: list[str]) -> dict[str, bytes]:
        """Expand the shares of these clients for `round_number`; their bindings (a client without a deposit is left out)."""
        with self._lock:
            self._bound_round = max(self._bound_round, round_number)
            for old in [r for r in self._seeds if r < round_number]:
                del self._seeds[old]
            seeds = self._seeds.get(round_number, {})
            present = [c for c in dict.fromkeys(clients) if c in seeds][: self.max_clients]
        self._shape = shape
        self._parties = {client: Party(shape, seed=seeds[client]) for client in present}
        return {client: party.binding() for client, party in self._parties.items()}

    def open(self, round_number: int, challenge_seed: bytes, clients: list[str]) -> dict[str, bytes]:
        shape = self._bound(round_number)
        if len(challenge_seed) != proof.SEED_BYTES:
            raise UpdateRejected("malformed", f"a challenge seed is {proof.SEED_BYTES} bytes")
        challenge = Challenge.from_seed(challenge_seed, shape)
        return {c: self._parties[c].open(challenge).astype("<u8").tobytes() for c in dict.fromkeys(clients) if c in self._parties}

    def sum(self, round_number: int, clients: list[str], weights: list[int]) -> bytes:
        shape = self._bound(round_number)
        if len(clients) != len(weights) or len(set(clients)) != len(clients) or any(c not in self._parties for c in clients):
            raise UpdateRejected("malformed", "a sum names bound clients, each once, with one weight each")
        total, above = np.zeros(shape.coordinates, dtype=np.uint64), np.zeros(proof.NORM_LEVELS, dtype=np.uint64)
        for client, weight in zip(clients, weights, strict=True):
            total = field.add(total, field.mul(self._parties[client].input_share(), field.element(weight)))
            above = field.add(above, self._parties[client].norm_share())
        with self._lock:
            self._seeds.pop(round_number, None)
        return np.concatenate([total, above]).astype("<u8").tobytes()  # the weighted sum's share, then the norm counts'

    def _bound(self, round_number: int) -> Shape:
        if self._shape is None or round_number != self._bound_round:
            raise UpdateRejected("stale_round", f"round {round_number} is not the bound round ({self._bound_round})")
        return self._shape
