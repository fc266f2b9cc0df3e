"""Polynomials over the field given by their values at the nodes 0, 1, ..., n-1: Lagrange coefficients at a point,
and the extension of many such polynomials (a matrix's columns) to further points.

The proof (proof.py) interpolates each column of an m x m matrix of wires at the nodes 0..m (node 0 a random blind);
the prover extends them to the nodes m+1..2m, and each server evaluates them at one random point. Nodes are small
consecutive integers, so every denominator is a ratio of factorials (no general inversion per entry).
"""

from __future__ import annotations

import functools

import numpy as np

from fedtl.common.validated_sum import field

P = field.P
LIMB = 21  # bits of a field element's limbs when a matrix product runs in float64 (exact: see extend)


@functools.lru_cache(maxsize=16)
def _factorials(n: int) -> tuple[list[int], list[int]]:
    fact = [1] * (n + 1)
    for i in range(1, n + 1):
        fact[i] = fact[i - 1] * i % P
    inverse = [1] * (n + 1)
    inverse[n] = pow(fact[n], P - 2, P)
    for i in range(n, 0, -1):
        inverse[i - 1] = inverse[i] * i % P
    return fact, inverse


def _weights(nodes: int) -> list[int]:
    """1 / prod_{s != r} (r - s) for each node r."""
    fact, inverse = _factorials(nodes)
    return [inverse[r] * inverse[nodes - 1 - r] * (1 if (nodes - 1 - r) % 2 == 0 else P - 1) % P for r in range(nodes)]


@functools.lru_cache(maxsize=64)
def at(x: int, nodes: int) -> np.ndarray:
    """Lagrange coefficients of the nodes 0..nodes-1 at x (x not a node): f(x) = sum_r coefficient_r * f(r). Read-only:
    one challenge point serves every client of a round."""
    x %= P
    if x < nodes:
        raise ValueError(f"{x} is a node")
    gaps = [(x - r) % P for r in range(nodes)]
    prefix = [1] * (nodes + 1)  # one inversion for all the gaps (Montgomery's trick)
    for r, gap in enumerate(gaps):
        prefix[r + 1] = prefix[r] * gap % P
    whole, weights = prefix[nodes], _weights(nodes)
    inverse, out = pow(whole, P - 2, P), [0] * nodes
    for r in range(nodes - 1, -1, -1):
        out[r] = whole * weights[r] % P * (inverse * prefix[r] % P) % P  # inverse * prefix[r] = 1 / gap_r
        inverse = inverse * gaps[r] % P
    coefficients = np.array(out, dtype=np.uint64)
    coefficients.flags.writeable = False
    return coefficients


@functools.lru_cache(maxsize=8)
def beyond(nodes: int, count: int) -> np.ndarray:
    """(count x nodes) Lagrange coefficients of the nodes 0..nodes-1 at the points nodes..nodes+count-1."""
    fact, inverse = _factorials(nodes + count)
    weights = np.array(_weights(nodes), dtype=np.uint64)
    xs = np.arange(nodes, nodes + count)
    whole = np.array([fact[x] * inverse[x - nodes] % P for x in xs], dtype=np.uint64)  # prod_s (x - s) = x! / (x - nodes)!
    gaps = xs[:, None] - np.arange(nodes)[None, :]  # 1 .. nodes + count - 1
    small = np.array([0, *(inverse[g] * fact[g - 1] % P for g in range(1, nodes + count))], dtype=np.uint64)  # 1 / g
    return field.mul(field.mul(whole[:, None], weights[None, :]), small[gaps])


def extend(coefficients: np.ndarray, values: np.ndarray) -> np.ndarray:
    """coefficients (k x n, field) @ values (n x c) mod P. Small signed integer values (|v| < 2^17, as wires and
    centred coordinates are) take three float64 matrix products over 21-bit limbs, exact since n * 2^21 * 2^17 < 2^53;
    anything else (a cheater's wires, in tests) the general way."""
    k, n = coefficients.shape
    if values.dtype == np.int64 and n < 1 << 15 and (values.size == 0 or int(np.abs(values).max()) < 1 << 17):
        out = np.zeros((k, values.shape[1]), dtype=np.uint64)
        plain = values.astype(np.float64)
        for i in range(3):
            limb = ((coefficients >> np.uint64(LIMB * i)) & np.uint64((1 << LIMB) - 1)).astype(np.float64)
            product = field.of_ints(np.rint(limb @ plain).astype(np.int64))
            out = field.add(out, field.mul(product, field.element(1 << (LIMB * i))))
        return out
    values = field.of_ints(values) if values.dtype == np.int64 else values
    return np.stack([column_sums(field.mul(coefficients[row][:, None], values)) for row in range(k)])


def column_sums(matrix: np.ndarray) -> np.ndarray:
    """sum over rows mod P, per column (each row's entries below P; up to 2^32 rows)."""
    high = (matrix >> np.uint64(32)).sum(axis=0, dtype=np.uint64) % np.uint64(P)
    low = (matrix & np.uint64(0xFFFFFFFF)).sum(axis=0, dtype=np.uint64) % np.uint64(P)
    return field.add(field.mul(high, field.element(1 << 32)), low)
