"""Client-level DP with the noise added by the clients, under secure aggregation's masks (distributed DP).

The coordinator never sees an un-noised sum: each of the k selected clients clips its update to C, encodes it with
weight 1 and adds Skellam noise of variance σ²/k in fixed-point units (common/secagg/noise.py); the masked sum it
unmasks already holds noise of std σ = z · sensitivity. Only the clients are trusted for noise, each for its own share:
c clients colluding with the coordinator can subtract theirs, leaving (k − c)/k of the variance.

A client that drops out takes its noise with it: m survivors leave variance m·σ²/k. The ledger records each round with
the noise that was really in it (and the Skellam-to-Gaussian margin), so ε is never understated; before a round,
`--max-epsilon` is checked against the worst case, the fewest survivors that can still unmask (the threshold).
`--target-epsilon` calibrates z for rounds where every selected client survives.

Weights are uniform (a weight would be a client's example count, hidden under the masks, and the sensitivity would
grow with it); adaptive clipping is refused (its count would need noise of its own in the sum); the RDP accountant
only (the Skellam bound is an RDP bound).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import torch

from fedtl.common.privacy.accountant import calibrate
from fedtl.common.secagg import noise as skellam
from fedtl.server.secagg.strategy import SecureAggregation
from fedtl.server.strategies.base import Aggregate, Aggregator, BudgetSpent, RoundContext
from fedtl.server.strategies.client_dp import ClientLevelDP
from fedtl.server.strategies.dp_settings import ClientDPSettings
from fedtl.server.strategies.wrapping import WrappedAggregator
from fedtl.server.validation import Update

logger = logging.getLogger(__name__)


class DistributedDP(ClientLevelDP):
    def __init__(self, inner: SecureAggregation, settings: ClientDPSettings, ledger_path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner, settings, ledger_path)
        self.secure = inner

    def recorded(self, noise: float, coordinates: int, survivors: int, selected: int) -> float:
        """The multiplier the ledger records for a round where `survivors` of `selected` clients added their noise."""
        return skellam.ledger_multiplier(noise * math.sqrt(survivors / selected), coordinates, self.secure.settings.bits)

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        self.load()
        coordinates = sum(t.numel() for t in template.values() if t.is_floating_point())
        k = len(context.participants)
        if not self.noise:
            target = calibrate(self.s.target_epsilon, self.s.delta,
                               lambda z: [dataclasses.replace(self.step_of(context, z), count=self.s.rounds)], self.s.accountant)
            self.noise = target  # the smallest z whose recorded multiplier reaches the target's (the margin shrinks as z grows)
            while self.recorded(self.noise, coordinates, k, k) < target:
                self.noise *= 1 + 1e-6 + (target - self.recorded(self.noise, coordinates, k, k)) / target
            logger.info("distributed DP: noise multiplier %.4f reaches ε = %g at δ = %g after %d rounds of %d of %d clients",
                        self.noise, self.s.target_epsilon, self.s.delta, self.s.rounds, k, max(context.population, k))
            self._write_ledger()
        fewest = self.secure.threshold(k)
        if self.s.max_epsilon:
            after = self.epsilon([self.step_of(context, self.recorded(self.noise, coordinates, fewest, k))])
            if after > self.s.max_epsilon:
                raise BudgetSpent(f"privacy budget: round {context.round} could bring the federation's ε to {after:.3f} at "
                                  f"δ = {self.s.delta:g} (if only {fewest} of {k} clients survive to add their noise), over "
                                  f"--max-epsilon {self.s.max_epsilon:g} (spent so far: {self.epsilon():.3f})")
        self.secure.noise = self.noise
        return _NoisedSum(self.secure.open(template, context), self, context, coordinates)

    def describe(self) -> str:
        noise = f"noise {self.s.noise:g}" if self.s.noise else f"noise for ε = {self.s.target_epsilon:g}"
        return (f"{self.inner.describe()}, distributed client-level DP (clip {self.s.clip:g}, {noise} added by the clients as "
                f"Skellam shares, uniform weights, δ = {self.s.delta:g})")


class _NoisedSum(WrappedAggregator):
    """Counts the round in the ledger, with the noise its survivors really added, before the aggregate goes anywhere."""

    def __init__(self, inner: Aggregator, owner: DistributedDP, context: RoundContext, coordinates: int) -> None:
        super().__init__(inner)
        self.owner, self.context, self.coordinates = owner, context, coordinates

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        return update, weight  # clipping and noise happened on the clients

    def result(self) -> Aggregate:
        aggregate = super().result()
        owner, selected, survivors = self.owner, len(self.context.participants), aggregate.count
        noise = owner.noise * math.sqrt(survivors / selected)
        owner.steps.append(owner.step_of(self.context, owner.recorded(owner.noise, self.coordinates, survivors, selected)))
        spent = owner._write_ledger()
        bits = owner.secure.settings.bits
        std = skellam.sum_std(owner.noise, self.coordinates, bits, selected, survivors) * 2 * owner.s.clip / skellam.levels(bits) / survivors
        aggregate.metrics.update(epsilon=spent, dp_clip=owner.s.clip, dp_noise_std=std, dp_noise_multiplier=noise)
        return aggregate
