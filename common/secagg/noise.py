"""Distributed noise for client-level DP under secure aggregation: each client adds integer Skellam noise to its
fixed-point input, so the coordinator only ever unmasks a sum that is already noised.

Skellam noise (Agarwal, Kairouz, Liu, NeurIPS 2021) is the difference of two Poisson variables: integer, so it goes
through the modular sums unrounded; closed under summation, so k clients that each add variance μ/k give exactly the
Skellam noise of variance μ on the sum, whichever of them survive (m survivors: variance m·μ/k); sampled with numpy's
Poisson sampler, from the operating system's randomness.

Everything here is in fixed-point units (an update clipped to norm C spans levels/2 of them). One client's
contribution moves the sum by at most `sensitivity`: levels/2 for the clipped update plus √D for stochastic rounding
(each coordinate rounds by less than 1). The round's noise multiplier z is σ / sensitivity, as for the Gaussian.

Accounting: Skellam noise of variance μ satisfies (α, ε(α))-RDP with
    ε(α) <= α Δ2² / (2μ) + min(((2α − 1) Δ2² + 6 Δ1) / (4μ²), 3 Δ1 / (2μ))        (Agarwal et al. 2021, Cor. 3.6)
The first term is the Gaussian's of the same variance; for every α >= 2 the second is at most r times the first,
r = min(1/μ + 3 Δ1 / (2 μ Δ2²), 3 Δ1 / (2 Δ2²)). So a Gaussian of variance μ / (1 + r) has an RDP curve above the
Skellam's at every order, and the ledger records that Gaussian (`ledger_multiplier`): dp-accounting's RDP accountant
then bounds ε from above (its subsampling bounds grow with the base curve). With 16 bits or more, r is below 1e-6.
"""

from __future__ import annotations

import math
import os

import numpy as np

TAIL = 20.0  # noise is taken to stay within TAIL standard deviations (a Skellam of variance >= 1: P < 1e-80)
MAX_POISSON = 1e18  # numpy's Poisson sampler takes means up to ~9.2e18


def levels(bits: int) -> int:
    return 2**bits - 1


def sensitivity(coordinates: int, bits: int) -> float:
    """L2 bound, in fixed-point units, on how far one client's rounded contribution moves the sum."""
    return levels(bits) / 2 + math.sqrt(max(0, coordinates))


def client_variance(noise: float, coordinates: int, bits: int, participants: int) -> float:
    """Each of `participants` clients' Skellam variance, so that the sum of all has σ = noise · sensitivity."""
    if noise <= 0:
        return 0.0
    return (noise * sensitivity(coordinates, bits)) ** 2 / max(1, participants)


def sum_std(noise: float, coordinates: int, bits: int, participants: int, survivors: int) -> float:
    """Standard deviation (fixed-point units) of the noise in the sum of `survivors` of `participants` inputs."""
    return math.sqrt(client_variance(noise, coordinates, bits, participants) * survivors)


def ledger_multiplier(noise: float, coordinates: int, bits: int) -> float:
    """The multiplier of a Gaussian whose RDP bounds that of Skellam noise with multiplier `noise` at every order >= 2."""
    if noise <= 0:
        return 0.0
    d2 = sensitivity(coordinates, bits)
    d1 = d2 * min(math.sqrt(coordinates), d2)  # integer vectors: L1 <= sqrt(D) L2 and L1 <= L2^2
    variance = (noise * d2) ** 2
    excess = min(1 / variance + 3 * d1 / (2 * variance * d2**2), 3 * d1 / (2 * d2**2))
    return noise / math.sqrt(1 + excess)


def skellam(variance: float, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`size` integer draws of Skellam noise with this variance (0: zeros), from the operating system's randomness unless a
    generator is given (tests): noise anyone could reproduce from the run's seed would protect nothing."""
    if variance <= 0:
        return np.zeros(size, dtype=np.int64)
    if not math.isfinite(variance) or variance / 2 > MAX_POISSON:
        raise ValueError(f"a noise variance of {variance:.3g} fixed-point units is more than the sampler takes: use fewer --secagg-bits")
    rng = rng or np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return rng.poisson(variance / 2, size).astype(np.int64) - rng.poisson(variance / 2, size).astype(np.int64)
