"""A client's input, secret-shared between two servers with a proof that it is in range, checked per client.

The building block of two-server validated aggregation (Prio-style: Corrigan-Gibbs and Boneh 2017, with client-dealt
correlations as in ELSA, Rathee et al. 2023). Each server alone sees only uniform shares and uniformly masked
openings; together they check, without learning the input, that

- every coordinate x_j is a b-bit integer (its bits are wires, each checked to be 0 or 1: an L-infinity bound), and
- the centred vector y = 2x - (2^b - 1), which is the update scaled by (2^b - 1) / clip, has ||y||^2 <= bound
  (an L2 bound; bound - ||y||^2 is shown by its own bits, and no square wraps modulo P).

A failed check names this client, and the sum simply leaves it out: shares need no mask to cancel. Weights are the
servers' to apply to the shares (public, never the client's number). Soundness: a cheating client passes with
probability below 4/P ~ 2^-59 when the challenge is drawn after both servers hold its shares. Privacy holds while
the two servers do not collude; integrity needs both to follow the protocol (as Prio3's).

The proof: two inner products on shares, each with a triple (a, b, c = <a, b>) the client deals, and each triple
checked by sacrificing a second one (a', b, c' = <a', b>) at a random t: t*c - c' - <t*a - a', b> = 0 only if
both c are right (or with probability 1/P). The client sends the first server (the leader) its share of the wires
and four corrections, and the second (the helper) a 32-byte seed; every other share comes from the two seeds.

Message by message, for one client: client -> leader: `LeaderShare`; client -> helper: its seed. After both hold
them, the leader draws the challenge seed and sends it to the helper. Each computes `Party.open_first` and sends it
to the other; both add the two, compute `Party.open_second` from the sum and exchange again; the client's input is
valid when the sum of the second openings is zero in every entry (`valid`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fedtl.common.validated_sum import field

SEED_BYTES = 32
TRIPLES = ("a1", "a1'", "b1", "a2", "a2'", "b2")  # bits check (over the wires), norm check (over the coordinates)


@dataclass(frozen=True)
class Shape:
    """A round's public parameters: what every client's input must look like."""

    coordinates: int
    bits: int
    bound: int  # the largest ||y||^2 allowed

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 23 or self.coordinates < 1 or self.bound < 0:
            raise ValueError(f"bits {self.bits} must be 1..23, coordinates {self.coordinates} >= 1 and bound {self.bound} >= 0")
        if self.coordinates * (1 << (2 * self.bits)) >= field.P // 2 or self.bound >= field.P // 4:  # no wrap, below
            raise ValueError(f"{self.coordinates} coordinates of {self.bits} bits: a squared norm could wrap modulo P")

    @property
    def norm_bits(self) -> int:
        return max(1, self.bound.bit_length())

    @property
    def wires(self) -> int:
        return self.coordinates * self.bits + self.norm_bits


def norm_bound(bits: int, coordinates: int) -> int:
    """The bound on ||y||^2 for an update clipped to the clip norm: (2^b - 1) at the clip, plus what stochastic rounding
    can add (at most 2 levels of y per coordinate)."""
    return math.ceil(((1 << bits) - 1 + 2 * math.sqrt(coordinates)) ** 2)


@dataclass(frozen=True)
class LeaderShare:
    seed: bytes  # the leader's seed for its triple shares
    wires: np.ndarray  # uint64: wires - helper's share, mod P
    corrections: tuple[int, int, int, int]  # c1, c1', c2, c2' minus the helper's shares, mod P


def wires_of(x: np.ndarray, shape: Shape) -> np.ndarray:
    """An honest client's wires: the bits of each coordinate (bit k of every coordinate together), then the bits of
    bound - ||y||^2. Raises ValueError for an input outside the shape (a client's own bug, never sent)."""
    x = np.asarray(x, dtype=np.int64)
    if x.shape != (shape.coordinates,) or x.min(initial=0) < 0 or x.max(initial=0) >= 1 << shape.bits:
        raise ValueError(f"an input is {shape.coordinates} integers in [0, 2^{shape.bits})")
    y = 2 * x - ((1 << shape.bits) - 1)
    slack = shape.bound - int(np.dot(y, y))
    if slack < 0:
        raise ValueError(f"||y||^2 exceeds the bound {shape.bound} by {-slack}")
    bits = (x[None, :] >> np.arange(shape.bits)[:, None]) & 1
    slack_bits = (slack >> np.arange(shape.norm_bits)) & 1
    return np.concatenate([bits.ravel(), slack_bits]).astype(np.uint64)


def share(wires: np.ndarray, shape: Shape) -> tuple[LeaderShare, bytes]:
    """(what the leader gets, the helper's seed) for any wires: an honest client's from `wires_of`, or a cheater's."""
    leader_seed, helper_seed = os.urandom(SEED_BYTES), os.urandom(SEED_BYTES)
    mine, theirs = _triples(leader_seed, shape), _triples(helper_seed, shape)
    whole = {name: field.add(mine[name], theirs[name]) for name in TRIPLES}
    products = (field.dot(whole["a1"], whole["b1"]), field.dot(whole["a1'"], whole["b1"]),
                field.dot(whole["a2"], whole["b2"]), field.dot(whole["a2'"], whole["b2"]))
    helper_c = _corrections(helper_seed)
    corrections = tuple((c - h) % field.P for c, h in zip(products, helper_c, strict=True))
    leader_wires = field.sub(np.asarray(wires, dtype=np.uint64), field.expand(helper_seed, "wires", len(wires)))
    return LeaderShare(leader_seed, leader_wires, corrections), helper_seed  # type: ignore[arg-type]


@dataclass(frozen=True)
class Challenge:
    rho: np.ndarray  # a random weight per wire: the bits check
    t1: int  # the sacrifice multipliers
    t2: int

    @classmethod
    def from_seed(cls, seed: bytes, shape: Shape) -> Challenge:
        t = field.expand(seed, "t", 2)
        return cls(field.expand(seed, "rho", shape.wires), int(t[0]), int(t[1]))


class Party:
    """One server's share of one client's input, and its side of the check."""

    def __init__(self, shape: Shape, leader: bool, seed: bytes, wires: np.ndarray | None = None,
                 corrections: tuple[int, ...] = ()) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a share's seed is {SEED_BYTES} bytes, got {len(seed)}")
        if leader:
            if wires is None or wires.shape != (shape.wires,) or wires.dtype != np.uint64 or len(corrections) != 4:
                raise ValueError(f"a leader's share is {shape.wires} uint64 wires and 4 corrections")
            if int(wires.max(initial=0)) >= field.P or any(not 0 <= c < field.P for c in corrections):
                raise ValueError("a leader's share holds values outside the field")
        self.shape, self.leader = shape, leader
        self.wires: np.ndarray = wires if wires is not None and leader else field.expand(seed, "wires", shape.wires)
        self.t = _triples(seed, shape)
        self.c = tuple(int(c) for c in corrections) if leader else _corrections(seed)

    def _y(self) -> np.ndarray:
        """This party's share of y = 2x - (2^b - 1): the constant belongs to the leader's share alone."""
        d, b = self.shape.coordinates, self.shape.bits
        x = np.zeros(d, dtype=np.uint64)
        for k in range(b):
            x = field.add(x, field.mul(self.wires[k * d : (k + 1) * d], field.element(1 << k)))
        y = field.mul(x, field.element(2))
        return field.sub(y, field.element((1 << b) - 1)) if self.leader else y

    def open_first(self, challenge: Challenge) -> np.ndarray:
        """This party's shares of e1, f1, e2, f2 (the inner products' inputs minus the triples) and of t*a - a'."""
        u1 = field.mul(challenge.rho, self.wires)
        v1 = field.sub(self.wires, field.element(1)) if self.leader else self.wires
        y = self._y()
        t = self.t
        return np.concatenate([field.sub(u1, t["a1"]), field.sub(v1, t["b1"]), field.sub(y, t["a2"]), field.sub(y, t["b2"]),
                               field.sub(field.mul(t["a1"], field.element(challenge.t1)), t["a1'"]),
                               field.sub(field.mul(t["a2"], field.element(challenge.t2)), t["a2'"])])

    def open_second(self, challenge: Challenge, opened: np.ndarray) -> np.ndarray:
        """From the first openings added up: this party's shares of the four values that must all be zero."""
        n, d = self.shape.wires, self.shape.coordinates
        if opened.shape != (3 * n + 3 * d,):
            raise ValueError(f"the first openings are {3 * n + 3 * d} values, got {opened.shape}")
        e1, f1, e2, f2 = opened[:n], opened[n : 2 * n], opened[2 * n : 2 * n + d], opened[2 * n + d : 2 * n + 2 * d]
        eps1, eps2 = opened[2 * n + 2 * d : 3 * n + 2 * d], opened[3 * n + 2 * d :]
        t, (c1, c1s, c2, c2s) = self.t, self.c
        bits_check = (c1 + field.dot(e1, t["b1"]) + field.dot(t["a1"], f1) + (field.dot(e1, f1) if self.leader else 0)) % field.P
        norm = (c2 + field.dot(e2, t["b2"]) + field.dot(t["a2"], f2) + (field.dot(e2, f2) if self.leader else 0)) % field.P
        sacrifice1 = (challenge.t1 * c1 - c1s - field.dot(eps1, t["b1"])) % field.P
        sacrifice2 = (challenge.t2 * c2 - c2s - field.dot(eps2, t["b2"])) % field.P
        slack_bits = self.wires[n - self.shape.norm_bits :]
        slack = field.dot(slack_bits, np.array([1 << k for k in range(self.shape.norm_bits)], dtype=np.uint64))
        norm_check = ((self.shape.bound if self.leader else 0) - norm - slack) % field.P
        return np.array([bits_check, sacrifice1, sacrifice2, norm_check], dtype=np.uint64)

    def input_share(self) -> np.ndarray:
        """This party's share of x (summed over the valid clients, weighted by public weights, then added to the other's)."""
        d = self.shape.coordinates
        x = np.zeros(d, dtype=np.uint64)
        for k in range(self.shape.bits):
            x = field.add(x, field.mul(self.wires[k * d : (k + 1) * d], field.element(1 << k)))
        return x


def valid(leader_second: np.ndarray, helper_second: np.ndarray) -> bool:
    return not field.add(leader_second, helper_second).any()


def check(leader: Party, helper: Party, challenge: Challenge) -> bool:
    """Both servers' sides in one process (tests, benchmarks): what they compute and exchange, in order."""
    opened = field.add(leader.open_first(challenge), helper.open_first(challenge))
    return valid(leader.open_second(challenge, opened), helper.open_second(challenge, opened))


def _triples(seed: bytes, shape: Shape) -> dict[str, np.ndarray]:
    sizes = {"a1": shape.wires, "a1'": shape.wires, "b1": shape.wires, "a2": shape.coordinates, "a2'": shape.coordinates,
             "b2": shape.coordinates}
    return {name: field.expand(seed, name, sizes[name]) for name in TRIPLES}


def _corrections(seed: bytes) -> tuple[int, int, int, int]:
    c = field.expand(seed, "c", 4)
    return int(c[0]), int(c[1]), int(c[2]), int(c[3])
