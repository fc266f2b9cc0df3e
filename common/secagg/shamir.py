"""Shamir secret sharing over the prime field of p = 2^521 - 1 (a Mersenne prime: any 256-bit secret is one element).

Shares are points (x, f(x)) of a random polynomial f of degree t - 1 with f(0) the secret; x is a participant's
1-based index. Any t shares give the secret by Lagrange interpolation at 0; fewer fit every secret equally well.
Shamir alone does not detect a wrong share: callers check a reconstructed secret against a commitment, and
with more than t shares `combine_checked` finds the subset that agrees with it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping

P = (1 << 521) - 1
SHARE_BYTES = 66  # 521 bits


def split(secret: int, xs: list[int], threshold: int) -> dict[int, int]:
    if not 0 <= secret < P:
        raise ValueError("secret out of the field")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or any(not 0 < x < P for x in xs):
        raise ValueError(f"need 1 <= threshold <= {len(xs)} distinct non-zero points, got threshold {threshold}")
    coefficients = [secret] + [secrets.randbelow(P) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in xs}


def combine(shares: Mapping[int, int]) -> int:
    """f(0) of the polynomial through these points (exactly `threshold` of them, or more of the same polynomial)."""
    return _interpolate(shares, 0)


def off_polynomial(shares: Mapping[int, int], through: Mapping[int, int]) -> list[int]:
    """The points among `shares` that do not lie on the polynomial through `through` (a verified subset): who sent a wrong share."""
    return sorted(x for x, y in shares.items() if x not in through and _interpolate(through, x) != y)


def combine_checked(shares: Mapping[int, int], threshold: int, valid: Callable[[int], bool],
                    max_trials: int = 256) -> tuple[int, dict[int, int]] | None:
    """(the secret `valid` accepts, the `threshold` shares that gave it), or None. Tries leaving out no share, then each
    one, then each pair, ...: with e wrong shares among m it finds the secret within 1 + m + ... + C(m, e) trials."""
    points = sorted(shares)
    tried: set[tuple[int, ...]] = set()
    for left_out in range(len(points) - threshold + 1):
        for excluded in itertools.combinations(points, left_out):
            subset = tuple(x for x in points if x not in excluded)[:threshold]
            if subset in tried:
                continue
            if len(tried) >= max_trials:
                return None
            tried.add(subset)
            chosen = {x: shares[x] for x in subset}
            candidate = combine(chosen)
            if valid(candidate):
                return candidate, chosen
    return None


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= P:
        raise ValueError("share out of the field")
    return value


def _interpolate(points: Mapping[int, int], at: int) -> int:
    """Lagrange interpolation of the points, evaluated at `at`."""
    items = list(points.items())
    value = 0
    for i, (xi, yi) in enumerate(items):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(items):
            if i != j:
                numerator = numerator * (at - xj) % P
                denominator = denominator * (xi - xj) % P
        value = (value + yi * numerator * pow(denominator, -1, P)) % P
    return value


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % P
    return value
