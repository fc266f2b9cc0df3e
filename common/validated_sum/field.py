"""Arithmetic modulo the Mersenne prime P = 2^61 - 1 on numpy uint64 arrays, and field elements from a seed.

Why this field: shares must be uniform and checks sound (a cheating client passes a random check with probability
about 1/P = 2^-61), a squared norm of fixed-point values must not wrap (d * 2^(2b) < P for d = 12,810 and b <= 23),
and products must be computable with 64-bit numpy words: 2^61 = 1 (mod P) makes reduction two shifts and a mask.
Pseudorandom elements come from the ChaCha20 keystream (common/secagg/crypto.py), never a general-purpose RNG.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedtl.common.secagg import crypto

P = (1 << 61) - 1
_P = np.uint64(P)
_LOW32 = np.uint64(0xFFFFFFFF)
_LOW29 = np.uint64((1 << 29) - 1)


def reduce(x: np.ndarray) -> np.ndarray:
    """x mod P for uint64 x (any value below 2^64)."""
    x = (x & _P) + (x >> np.uint64(61))  # at most P + 7
    return x - (x >= _P).astype(np.uint64) * _P


def add(a: np.ndarray | np.uint64, b: np.ndarray | np.uint64) -> np.ndarray:
    return reduce(np.asarray(a, dtype=np.uint64) + np.asarray(b, dtype=np.uint64))  # < 2^62: no overflow


def sub(a: np.ndarray | np.uint64, b: np.ndarray | np.uint64) -> np.ndarray:
    return reduce(np.asarray(a, dtype=np.uint64) + (_P - np.asarray(b, dtype=np.uint64)))


def neg(a: np.ndarray) -> np.ndarray:
    return reduce(_P - a)


def mul(a: np.ndarray | np.uint64, b: np.ndarray | np.uint64) -> np.ndarray:
    """a * b mod P for elements below P: 32-bit halves, so no partial product exceeds 64 bits."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    a1, a0, b1, b0 = a >> np.uint64(32), a & _LOW32, b >> np.uint64(32), b & _LOW32  # a1, b1 < 2^29
    high = a1 * b1 * np.uint64(8)  # a1*b1*2^64 = a1*b1*8 (mod P), < 2^61
    mid = a1 * b0 + a0 * b1  # < 2^62; mid*2^32 = (mid >> 29) * 2^61 + (mid & (2^29 - 1)) * 2^32
    mid = (mid >> np.uint64(29)) + ((mid & _LOW29) << np.uint64(32))
    return reduce(reduce(high + mid) + reduce(a0 * b0))


def dot(a: np.ndarray, b: np.ndarray) -> int:
    """sum(a * b) mod P, as a Python int."""
    return total(mul(a, b))


def total(a: np.ndarray) -> int:
    """sum(a) mod P: summed in 32-bit halves (no uint64 overflow for up to 2^32 elements)."""
    return (int((a >> np.uint64(32)).sum(dtype=np.uint64)) * (1 << 32) + int((a & _LOW32).sum(dtype=np.uint64))) % P


def element(value: int) -> np.uint64:
    return np.uint64(value % P)


def of_ints(values: np.ndarray) -> np.ndarray:
    """Signed integers (|v| < 2^61) as field elements."""
    v = np.asarray(values, dtype=np.int64)
    return np.where(v < 0, _P - (-v).astype(np.uint64), v.astype(np.uint64))


def expand(seed: bytes, label: str, count: int) -> np.ndarray:
    """`count` pseudorandom field elements for one purpose (`label`) of a 32-byte seed."""
    words = crypto.mask(hashlib.sha256(seed + b"|" + label.encode()).digest(), count)
    words &= _P  # uniform on [0, P]; P itself (probability 2^-61) stands for 0
    words[words == _P] = 0
    return words
