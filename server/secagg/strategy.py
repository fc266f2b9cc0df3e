"""Secure aggregation as a strategy: the weighted mean, computed from masked inputs the coordinator cannot read.

Every update of a secure round is one int16, int32 or int64 tensor, "masked": a client's clipped, fixed-point,
example-weighted update with its masks added (common/secagg/fixedpoint.py). `MaskedSum` adds them modulo 2^32 or
2^64 (the round's modulus: the smallest the sum cannot overflow) as they arrive (one
accumulator, whatever the number of clients), and `result` unmasks the sum with the survivors' revealed shares,
checks that it could have come from valid inputs, and decodes the weighted mean of the trainable float tensors.
The inner strategy (the server optimizer) applies it as it would a plain mean.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from fedtl.common.secagg import fixedpoint, noise
from fedtl.common.secagg.graph import effective_degree
from fedtl.common.secagg.messages import SecAggSetup
from fedtl.common.secagg.params import default_threshold, problem
from fedtl.server.secagg import SecAggSettings
from fedtl.server.secagg.protocol import SecAggRound
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, Strategy
from fedtl.server.strategies.stacked import AggregationError, FailedClosed
from fedtl.server.strategies.wrapping import Wrapper
from fedtl.server.validation import Expectation, Update

MASKED = "masked"  # the one tensor of a secure update


class SecureAggregation(Wrapper):
    """Replaces the inner rule's aggregation with a masked sum; the inner strategy still applies the result."""

    def __init__(self, inner: Strategy, settings: SecAggSettings) -> None:
        super().__init__(inner)
        self.settings = settings
        self.noise = 0.0  # distributed DP (server/secagg/distributed_dp.py) sets the round's noise multiplier

    def threshold(self, participants: int) -> int:
        """The fewest survivors a round of this many participants can unmask."""
        return self.settings.threshold or default_threshold(effective_degree(participants, self.settings.neighbours))

    def expectation(self, base: Expectation) -> Expectation:
        return base  # the round's MaskedSum says what its updates look like (the word size depends on who takes part)

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return masked_sum(self.settings, template, context, self.noise)

    def describe(self) -> str:
        s = self.settings
        graph = f"{s.neighbours} neighbours" if s.neighbours else "complete graph"
        threshold = f"threshold {s.threshold}" if s.threshold else "threshold 2k/3+1"
        weights = "uniform" if s.max_weight == 1 else f"weights <= {s.max_weight}"
        return f"secure aggregation (SecAgg+, {graph}, {threshold}, {s.bits} bits, clip {s.clip:g}, {weights}) of {self.inner.describe()}"


def round_setup(s: SecAggSettings, context: RoundContext, coordinates: int, noise_multiplier: float = 0.0) -> SecAggSetup:
    """A round's parameters, or AggregationError when this round's participants make them unsafe."""
    n = len(context.participants)
    degree = effective_degree(n, s.neighbours)
    threshold = s.threshold or default_threshold(degree)
    issue = problem(n, degree, threshold, s.bits, s.max_weight)
    if issue:
        raise AggregationError(f"round {context.round} cannot run securely with {n} selected clients: {issue}")
    noise_std = noise.sum_std(noise_multiplier, coordinates, s.bits, n, n)
    if fixedpoint.capacity_bits(n, s.max_weight, s.bits, noise_std) > fixedpoint.MAX_MODULUS_BITS:
        raise AggregationError(f"round {context.round}: {n} clients' {s.bits}-bit values and their noise overflow the "
                               f"{fixedpoint.MAX_MODULUS_BITS}-bit modulus: lower --secagg-bits")
    return SecAggSetup(tuple(sorted(context.participants)), threshold, degree, os.urandom(16), s.bits, s.clip, s.max_weight,
                       context.attempt, fixedpoint.modulus_bits(n, s.max_weight, s.bits, noise_std), noise_multiplier)


def masked_sum(s: SecAggSettings, template: Mapping[str, torch.Tensor], context: RoundContext,
               noise_multiplier: float = 0.0) -> MaskedSum:
    """The aggregator of one secure round: the weighted mean of `template`'s floating-point tensors, from masked inputs."""
    coordinates = sum(t.numel() for t in template.values() if t.is_floating_point())
    return MaskedSum(SecAggRound(round_setup(s, context, coordinates, noise_multiplier), context.round, context.base_digest), template)


class MaskedSum(Aggregator):
    def __init__(self, protocol: SecAggRound, template: Mapping[str, torch.Tensor]) -> None:
        self.protocol = self.secure = protocol
        self.setup = protocol.setup
        self.template = template
        self.names = sorted(n for n, t in template.items() if t.is_floating_point())
        self.shapes = {n: tuple(template[n].shape) for n in self.names}
        self.base: dict[str, torch.Tensor] = {}  # BatchNorm variances: kept positive despite rounding (see `result`)
        word = fixedpoint.WORDS[self.setup.modulus_bits]
        self.total = np.zeros(fixedpoint.length(sum(template[n].numel() for n in self.names)), dtype=word)
        self._count = 0
        self._clipped = 0

    def expectation(self, base: Expectation) -> Expectation:
        """One signed tensor of the round's word size (tensors have no unsigned words; the bits are the same)."""
        self.base = {n: self.template[n].detach().to(torch.float64) for n in self.names if n in base.positive}
        dtype = {16: torch.int16, 32: torch.int32, 64: torch.int64}[self.setup.modulus_bits]
        # masked words travel as they are (`raw`), whatever --upload-codec says: under secure aggregation `int8` means 8-bit
        # fixed-point values in words just wide enough for the sum (server/strategy_flags.py), not the int8 codec
        return dataclasses.replace(base, specs={MASKED: (dtype, (self.total.size,))}, parameters=frozenset(), positive={},
                                   encodings=frozenset({"raw"}))

    def add(self, client: str, update: Update, weight: float) -> None:
        masked = update.tensors[MASKED].numpy().view(self.total.dtype)
        np.add(self.total, masked, out=self.total)  # wraps at the modulus, as the masks need
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def stats(self) -> dict[str, int]:
        return {"clipped": self._clipped} if not self.setup.noise else {}  # noised inputs leave the clipped word at zero

    def noise_std(self) -> float:
        """The distributed noise's standard deviation in the sum of the inputs summed so far (fixed-point units)."""
        coordinates = self.total.size - fixedpoint.EXTRA
        return noise.sum_std(self.setup.noise, coordinates, self.setup.bits, len(self.setup.participants), self._count)

    def result(self) -> Aggregate:
        survivors = len(self.secure.survivors)
        if self._count != survivors:
            raise AggregationError(f"secure aggregation failed closed: {self._count} masked inputs summed, {survivors} survivors")
        total = self.secure.unmask(self.total)
        try:
            decoded = fixedpoint.decode(total, self._count, self.setup.clip, self.setup.bits, self.setup.max_weight, self.noise_std())
        except ValueError as exc:
            raise FailedClosed(f"secure aggregation failed closed: {exc} (a corrupted masked input, or masks that did not "
                                   "cancel)") from None
        tensors: dict[str, torch.Tensor] = {}
        offset = 0
        for name in self.names:
            size = math.prod(self.shapes[name])
            value = torch.from_numpy(decoded.update[offset : offset + size]).reshape(self.shapes[name])
            if name in self.base:  # rounding must not turn a variance zero or negative: keep base + mean >= base / 1000
                value = torch.maximum(value, self.base[name] * -(1 - 1e-3))
            tensors[name] = value
            offset += size
        self._clipped = decoded.clipped
        metrics = {"examples": float(decoded.weight), **decoded.stats}
        if not math.isnan(decoded.record_epsilon):  # an upper bound on the largest ε the clients spent (fixedpoint.py)
            metrics["record_epsilon"] = decoded.record_epsilon
        return Aggregate(tensors, float(decoded.weight), self._count, stats=self.stats(), metrics=metrics)
