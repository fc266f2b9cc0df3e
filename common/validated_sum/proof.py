"""A client's input, secret-shared between two servers with a proof that it is in range, checked per client.

The building block of two-server validated aggregation (Prio: Corrigan-Gibbs and Boneh 2017; its proofs as fully
linear proofs, Boneh et al. 2019, the shape of Prio3 in draft-irtf-cfrg-vdaf). Each server alone sees uniform shares
and uniformly blinded openings; together they check, without learning the input, that

- every coordinate x_j is a b-bit integer: its bits are wires, each shown to be 0 or 1 (an L-infinity bound), and
- the centred vector y = 2x - (2^b - 1), the update scaled by (2^b - 1) / clip, has ||y||^2 <= bound (an L2 bound:
  bound - ||y||^2 is shown by its own bits, and no square wraps modulo P).

A failed check names the client, and the sum leaves it out: shares need no mask to cancel. Weights are the servers'
to apply to the shares (public, never the client's number).

The proof, in square-root size. The wires, padded to an m x m matrix W, are read as m polynomials f_c (column c),
with f_c(0) a random blind and f_c(r) = W[r-1, c]. The client sends the values at 0..2m of
p(X) = sum_c sigma_c f_c(X) (f_c(X) - 1), where sigma comes from hashing the client's shares (so the client fixes W
before it learns sigma), and likewise q(X) = sum_c g_c(X)^2 over the centred coordinates (an m2 x m2 matrix Y). The
servers draw rho and a point tau, and open (each adding its share to the other's): f_c(tau) and g_c(tau) (blinded:
uniform), p(tau), q(tau), sum_r rho_r p(r) and bound - sum_r q(r) - slack. The input is valid when both sums are
zero and p(tau), q(tau) equal the polynomials of the opened values. A cheater passes with probability below
(2m + 2) / P ~ 2^-51 (a wrong p agrees with the true one at tau, or a nonzero bit error cancels under rho).

Message by message, for one client: client -> leader: `LeaderShare`; client -> helper: its 32-byte seed. Each server
sends the other its `Party.binding()` (32 bytes; together they give sigma). The leader draws the challenge seed
after both hold the shares and sends it to the helper. Each sends the other `Party.open(challenge)`
(m + m2 + 4 values); both add the two and decide with `valid`. Privacy holds while the servers do not collude;
integrity needs both to follow the protocol (as Prio3's).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedtl.common.validated_sum import field, poly

SEED_BYTES = 32
NORM_LEVELS, NORM_STEP = 40, 1.25  # the norm's bits: above bound / 1.25^k for k = 0..39 (bit 0: clipped)


@dataclass(frozen=True)
class Shape:
    """A round's public parameters: what every client's input must look like."""

    coordinates: int
    bits: int
    bound: int  # the largest ||y||^2 allowed

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16 or self.coordinates < 1 or self.bound < 0:
            raise ValueError(f"bits {self.bits} must be 1..16, coordinates {self.coordinates} >= 1 and bound {self.bound} >= 0")
        if self.coordinates * (1 << (2 * self.bits)) >= field.P // 2 or self.bound >= field.P // 4:  # no wrap, below
            raise ValueError(f"{self.coordinates} coordinates of {self.bits} bits: a squared norm could wrap modulo P")

    @property
    def norm_bits(self) -> int:
        return max(1, self.bound.bit_length())

    @property
    def wires(self) -> int:  # the values' bits, the slack's bits, the norm's bits
        return self.coordinates * self.bits + self.norm_bits + NORM_LEVELS

    @property
    def side(self) -> int:  # m: the wires as an m x m matrix
        return math.isqrt(self.wires - 1) + 1

    @property
    def norm_side(self) -> int:  # m2: the centred coordinates as an m2 x m2 matrix
        return math.isqrt(self.coordinates - 1) + 1

    @property
    def proof_length(self) -> int:  # blinds, then p's and q's values at 0..2m and 0..2m2
        return self.side + self.norm_side + (2 * self.side + 1) + (2 * self.norm_side + 1)


def norm_bound(bits: int, coordinates: int) -> int:
    """The bound on ||y||^2 for an update clipped to the clip norm: (2^b - 1) at the clip, plus what stochastic rounding
    can add (at most 2 levels of y per coordinate)."""
    return math.ceil(((1 << bits) - 1 + 2 * math.sqrt(coordinates)) ** 2)


@dataclass(frozen=True)
class LeaderShare:
    wires: np.ndarray  # uint64: the wires minus the helper's share, mod P
    proof: np.ndarray  # uint64: the proof (blinds, p's and q's values) minus the helper's share


def norm_bits(norm: float, bound: float) -> np.ndarray:
    """Whether a norm lies above bound / 1.25^k, k = 0..39 (as int64 0/1): bit 0 says the update was clipped."""
    return (norm > bound * NORM_STEP ** -np.arange(NORM_LEVELS)).astype(np.int64)


def wires_of(x: np.ndarray, shape: Shape, above: np.ndarray | None = None) -> np.ndarray:
    """An honest client's wires (int64 0/1): the bits of each coordinate (bit k of every coordinate together), the bits
    of bound - ||y||^2, then where its update's norm lies (`norm_bits`, before clipping). The sum counts the clients
    above each level: the coordinator learns how many, not who, and sets the next bound at a quantile of the norms.
    Raises ValueError for an input outside the shape (a client's own bug, never sent)."""
    x = np.asarray(x, dtype=np.int64)
    if x.shape != (shape.coordinates,) or x.min(initial=0) < 0 or x.max(initial=0) >= 1 << shape.bits:
        raise ValueError(f"an input is {shape.coordinates} integers in [0, 2^{shape.bits})")
    y = 2 * x - ((1 << shape.bits) - 1)
    slack = shape.bound - int(np.dot(y, y))
    if slack < 0:
        raise ValueError(f"||y||^2 exceeds the bound {shape.bound} by {-slack}")
    bits = (x[None, :] >> np.arange(shape.bits)[:, None]) & 1
    levels = np.zeros(NORM_LEVELS, dtype=np.int64) if above is None else np.asarray(above, dtype=np.int64)
    return np.concatenate([bits.ravel(), (slack >> np.arange(shape.norm_bits)) & 1, levels])


def share(wires: np.ndarray, shape: Shape) -> tuple[LeaderShare, bytes]:
    """(what the leader gets, the helper's seed) for any wires: an honest client's from `wires_of` (int64 bits), or a
    cheater's (any field elements, as uint64)."""
    helper_seed = os.urandom(SEED_BYTES)
    exact = field.of_ints(wires) if wires.dtype == np.int64 else wires
    leader_wires = field.sub(exact, field.expand(helper_seed, "wires", shape.wires))
    sigma = _sigma(shape, _digest(leader_wires), _digest(helper_seed))
    m, m2 = shape.side, shape.norm_side
    blind, blind2 = field.expand(os.urandom(SEED_BYTES), "blind", m), field.expand(os.urandom(SEED_BYTES), "blind", m2)
    W = _square(wires, m)
    Y = _square(_centred_bits(wires, shape) if wires.dtype == np.int64 else _centred(exact, shape, True), m2)
    p = _values(blind, W, m, lambda f: _row_sums(field.mul(field.mul(f, field.sub(f, field.element(1))), sigma[None, :])))
    q = _values(blind2, Y, m2, lambda g: _row_sums(field.mul(g, g)))
    proof = np.concatenate([blind, blind2, p, q])
    return LeaderShare(leader_wires, field.sub(proof, field.expand(helper_seed, "proof", proof.size))), helper_seed


@dataclass(frozen=True)
class Challenge:
    rho: np.ndarray  # a random weight per row of wires
    tau: int  # where the polynomials are compared: not a node

    @classmethod
    def from_seed(cls, seed: bytes, shape: Shape) -> Challenge:
        tau = int(field.expand(seed, "tau", 1)[0])
        nodes = 2 * shape.side + 1
        return cls(field.expand(seed, "rho", shape.side), tau + nodes if tau < nodes else tau)


class Party:
    """One server's share of one client's input, and its side of the check."""

    def __init__(self, shape: Shape, leader: LeaderShare | None = None, seed: bytes | None = None) -> None:
        if leader is not None:
            for name, part, size in (("wires", leader.wires, shape.wires), ("proof", leader.proof, shape.proof_length)):
                if part.shape != (size,) or part.dtype != np.uint64:
                    raise ValueError(f"a leader's {name} share is {size} uint64 values")
                if int(part.max(initial=0)) >= field.P:
                    raise ValueError(f"a leader's {name} share holds values outside the field")
            self.wires, self.proof, self._binding = leader.wires, leader.proof, _digest(leader.wires)
        elif seed is not None and len(seed) == SEED_BYTES:
            self.wires = field.expand(seed, "wires", shape.wires)
            self.proof, self._binding = field.expand(seed, "proof", shape.proof_length), _digest(seed)
        else:
            raise ValueError(f"a helper's share is a {SEED_BYTES}-byte seed")
        self.shape, self.leader = shape, leader is not None

    def binding(self) -> bytes:
        """This party's part of sigma: a digest of its share (the leader's wires, the helper's seed)."""
        return self._binding

    def open(self, challenge: Challenge) -> np.ndarray:
        """This party's shares of f(tau) (m), g(tau) (m2), p(tau), q(tau), sum_r rho_r p(r), bound - sum_r q(r) - slack."""
        s, m, m2 = self.shape, self.shape.side, self.shape.norm_side
        blind, blind2 = self.proof[:m], self.proof[m : m + m2]
        p, q = self.proof[m + m2 : 3 * m + m2 + 1], self.proof[3 * m + m2 + 1 :]
        at_m, at_m2 = poly.at(challenge.tau, m + 1), poly.at(challenge.tau, m2 + 1)
        f = field.add(field.mul(blind, at_m[0]), poly.column_sums(field.mul(_square(self.wires, m), at_m[1:, None])))
        Y = _square(_centred(self.wires, s, self.leader), m2)
        g = field.add(field.mul(blind2, at_m2[0]), poly.column_sums(field.mul(Y, at_m2[1:, None])))
        start = s.coordinates * s.bits
        slack = field.dot(self.wires[start : start + s.norm_bits], np.array([1 << k for k in range(s.norm_bits)], dtype=np.uint64))
        norm = ((s.bound if self.leader else 0) - field.total(q[1 : m2 + 1]) - slack) % field.P
        scalars = [field.dot(poly.at(challenge.tau, 2 * m + 1), p), field.dot(poly.at(challenge.tau, 2 * m2 + 1), q),
                   field.dot(challenge.rho, p[1 : m + 1]), norm]
        return np.concatenate([f, g, np.array(scalars, dtype=np.uint64)])  # uint64 throughout: a Python int list would go via float

    def input_share(self) -> np.ndarray:
        """This party's share of x (summed over the valid clients, weighted by public weights, then added to the other's)."""
        return _input(self.wires, self.shape)

    def norm_share(self) -> np.ndarray:
        """This party's share of the norm's bits (summed unweighted: how many clients lie above each level)."""
        return self.wires[-NORM_LEVELS:]


def valid(shape: Shape, leader_binding: bytes, helper_binding: bytes, leader_open: np.ndarray, helper_open: np.ndarray) -> bool:
    m, m2 = shape.side, shape.norm_side
    opened = field.add(leader_open, helper_open)
    if opened.shape != (m + m2 + 4,):
        raise ValueError(f"an opening is {m + m2 + 4} values, got {opened.shape}")
    f, g, (p_tau, q_tau, bits_check, norm_check) = opened[:m], opened[m : m + m2], (int(v) for v in opened[m + m2 :])
    sigma = _sigma(shape, leader_binding, helper_binding)
    return (bits_check == 0 and norm_check == 0 and p_tau == field.dot(field.mul(f, field.sub(f, field.element(1))), sigma)
            and q_tau == field.dot(g, g))


def check(leader: Party, helper: Party, challenge: Challenge) -> bool:
    """Both servers' sides in one process (tests, benchmarks): what they compute and exchange, in order."""
    return valid(leader.shape, leader.binding(), helper.binding(), leader.open(challenge), helper.open(challenge))


def _values(blind: np.ndarray, matrix: np.ndarray, m: int, gadget: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A gadget polynomial's values at 0..2m: the gadget of the blinds (node 0), of each row (1..m), and of the columns
    extended to m+1..2m (each column a polynomial with its blind at 0 and its entries at 1..m)."""
    coefficients = poly.beyond(m + 1, m)
    extended = field.add(poly.extend(coefficients[:, 1:], matrix), field.mul(coefficients[:, :1], blind[None, :]))
    exact = field.of_ints(matrix) if matrix.dtype == np.int64 else matrix
    return np.concatenate([gadget(blind[None, :]), gadget(exact), gadget(extended)])


def _row_sums(matrix: np.ndarray) -> np.ndarray:
    return poly.column_sums(matrix.T)


def _square(vector: np.ndarray, side: int) -> np.ndarray:
    padded = np.zeros(side * side, dtype=vector.dtype)
    padded[: vector.size] = vector
    return padded.reshape(side, side)


def _input(wires: np.ndarray, shape: Shape) -> np.ndarray:
    d, x = shape.coordinates, np.zeros(shape.coordinates, dtype=np.uint64)
    for k in range(shape.bits):
        x = field.add(x, field.mul(wires[k * d : (k + 1) * d], field.element(1 << k)))
    return x


def _centred(wires: np.ndarray, shape: Shape, leader: bool) -> np.ndarray:
    """A share of y = 2x - (2^b - 1): the constant belongs to the leader's share alone."""
    y = field.mul(_input(wires, shape), field.element(2))
    return field.sub(y, field.element((1 << shape.bits) - 1)) if leader else y


def _centred_bits(wires: np.ndarray, shape: Shape) -> np.ndarray:
    bits = wires[: shape.coordinates * shape.bits].reshape(shape.bits, shape.coordinates)
    return 2 * (bits << np.arange(shape.bits)[:, None]).sum(axis=0) - ((1 << shape.bits) - 1)


def _digest(data: bytes | np.ndarray) -> bytes:
    return hashlib.sha256(data if isinstance(data, bytes) else data.tobytes()).digest()


def _sigma(shape: Shape, leader_binding: bytes, helper_binding: bytes) -> np.ndarray:
    return field.expand(hashlib.sha256(b"sigma|" + leader_binding + helper_binding).digest(), "sigma", shape.side)
