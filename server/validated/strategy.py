"""Validated aggregation as a strategy: the leader's side of each round.

Every update of a validated round is the leader's share of one client's input: two int64 tensors, "wires" and
"proof" (field elements, common/validated_sum). `ValidatedSum` keeps them as they arrive; when the round closes it
asks the helper for its bindings, draws the challenge, compares openings client by client, leaves out (and names)
every client whose input fails or whose share never reached the helper, and adds up the rest with the helper's sum
under public weights (uniform: no client chooses its weight). The inner strategy applies the mean as a plain one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from fedtl.common.errors import UpdateRejected
from fedtl.common.validated_sum import field, proof
from fedtl.common.validated_sum.messages import ValidatedSetup
from fedtl.common.validated_sum.proof import Challenge, LeaderShare, Party, Shape
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, RoundProtocol, Strategy
from fedtl.server.strategies.stacked import AggregationError, FailedClosed
from fedtl.server.strategies.wrapping import Wrapper
from fedtl.server.validated import ValidatedSettings
from fedtl.server.validated.link import HelperLink
from fedtl.server.validation import Expectation, Update

logger = logging.getLogger(__name__)
WIRES, PROOF = "wires", "proof"  # the two tensors of a validated update
MIN_VALID = 3  # inputs a sum needs before anyone learns it


class ValidatedAggregation(Wrapper):
    """Replaces the inner rule's aggregation with the two servers' validated sum; the inner strategy applies the result.

    The bound follows a quantile of the clients' norms: each input proves 40 bits saying whether its norm lies above
    bound / 1.25^k, the sum counts the clients above each level, and the next round's bound is the lowest level that
    no more than the wanted share of clients exceeds (within a factor 1.25), never above --max-update-norm. A client
    may lie about its bits: that moves each count by one, as one honest client would. Round 1 has no counts yet: its
    bound is --max-update-norm."""

    def __init__(self, inner: Strategy, settings: ValidatedSettings) -> None:
        super().__init__(inner)
        self.settings = settings
        self.link = HelperLink(settings)
        self.clip = settings.clip  # this round's bound

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return ValidatedSum(self.settings, self.link, template, context, self.clip)

    def apply(self, weights: Mapping[str, torch.Tensor], aggregate: Aggregate, context: RoundContext) -> None:
        self.inner.apply(weights, aggregate, context)
        if self.settings.quantile and aggregate.count:
            above = [aggregate.stats.get(f"above_{k}", 0) for k in range(proof.NORM_LEVELS)]
            self.clip = next_bound(self.clip, above, aggregate.count, self.settings.quantile, self.settings.clip)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.inner.state_dict(), "validated.clip": torch.tensor(self.clip, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_state_dict({k: v for k, v in state.items() if k != "validated.clip"})
        if "validated.clip" in state:
            self.clip = float(state["validated.clip"])

    def describe(self) -> str:
        s = self.settings
        bound = f"L2 bound at the {s.quantile:g} quantile of the norms, at most {s.clip:g}" if s.quantile else f"L2 bound {s.clip:g}"
        return f"two-server validated aggregation (helper {s.helper}, {s.bits} bits, {bound}, uniform weights) of {self.inner.describe()}"


class ValidatedProtocol(RoundProtocol):
    """One phase, the updates; the task says what the input must look like and which helper the coordinator uses."""

    def __init__(self, setup: ValidatedSetup) -> None:
        self.setup = setup

    def task(self, task):  # type: ignore[no-untyped-def]
        return dataclasses.replace(task, validated=self.setup)

    def instruction(self, phase: str, client: str):  # type: ignore[no-untyped-def]
        raise AssertionError("a validated round has one phase")

    def phase_of(self, message: object) -> str:
        return "train"

    def receive(self, phase: str, client: str, message: object) -> None:
        raise UpdateRejected("wrong_phase", "a validated round takes updates only")


class ValidatedSum(Aggregator):
    def __init__(self, settings: ValidatedSettings, link: HelperLink, template: Mapping[str, torch.Tensor], context: RoundContext,
                 clip: float) -> None:
        self.settings, self.link, self.round, self.clip = settings, link, context.round, clip
        self.names = sorted(n for n, t in template.items() if t.is_floating_point())
        self.shapes = {n: tuple(template[n].shape) for n in self.names}
        self.template = template
        coordinates = sum(template[n].numel() for n in self.names)
        try:
            self.shape = Shape(coordinates, settings.bits, proof.norm_bound(settings.bits, coordinates))
        except ValueError as exc:
            raise AggregationError(f"validated aggregation cannot take this model: {exc}; lower --validated-bits") from None
        self.protocol = ValidatedProtocol(ValidatedSetup(coordinates, settings.bits, self.shape.bound, clip, settings.helper))
        self.parties: dict[str, Party] = {}
        self.left_out: dict[str, str] = {}
        self.base: dict[str, torch.Tensor] = {}
        self.above: list[int] = []  # clients whose norm lies above bound / 1.25^k, per k (k = 0: clipped)

    def expectation(self, base: Expectation) -> Expectation:
        self.base = {n: self.template[n].detach().to(torch.float64) for n in self.names if n in base.positive}
        specs = {WIRES: (torch.int64, (self.shape.wires,)), PROOF: (torch.int64, (self.shape.proof_length,))}
        return dataclasses.replace(base, specs=specs, parameters=frozenset(), positive={}, encodings=frozenset({"raw"}))

    def add(self, client: str, update: Update, weight: float) -> None:
        share = LeaderShare(update.tensors[WIRES].numpy().view(np.uint64).copy(), update.tensors[PROOF].numpy().view(np.uint64).copy())
        try:
            self.parties[client] = Party(self.shape, leader=share)
        except ValueError as exc:
            self.left_out[client] = f"its share is malformed ({exc})"

    @property
    def count(self) -> int:
        return len(self.parties)

    def stats(self) -> dict[str, int]:
        return {"clipped": self.above[0] if self.above else 0, **{f"above_{k}": n for k, n in enumerate(self.above)}}

    def result(self) -> Aggregate:
        names = sorted(self.parties)
        bindings = self.link.bind(self.round, self.shape, names)
        self.left_out.update({n: "its share never reached the helper" for n in names if n not in bindings})
        present = [n for n in names if n in bindings]
        seed = os.urandom(proof.SEED_BYTES)  # drawn now: every share of the round is fixed
        challenge = Challenge.from_seed(seed, self.shape)
        theirs = self.link.open(self.round, seed, present, self.shape.side + self.shape.norm_side + 4)
        valid = [n for n in present if n in theirs and proof.valid(self.shape, self.parties[n].binding(), bindings[n],
                                                                   self.parties[n].open(challenge), theirs[n])]
        self.left_out.update({n: "its input failed the range proof" for n in present if n not in valid})
        if self.left_out:
            logger.warning("round %d: validated aggregation left out %s", self.round,
                           ", ".join(f"{n} ({why})" for n, why in sorted(self.left_out.items())[:20]))
        if len(valid) < MIN_VALID:  # the sum of fewer would show too much of each (with two, each sees the other's)
            raise FailedClosed(f"validated aggregation: {len(valid)} valid inputs of {len(names)}, fewer than {MIN_VALID}")
        weights = [1] * len(valid)  # public and the same for everyone: no client's claim counts
        d = self.shape.coordinates
        total = self.link.sum(self.round, valid, weights, d + proof.NORM_LEVELS)  # the weighted sum, then the norm counts
        for name, weight in zip(valid, weights, strict=True):
            mine = np.concatenate([field.mul(self.parties[name].input_share(), field.element(weight)), self.parties[name].norm_share()])
            total = field.add(total, mine)
        levels = (1 << self.shape.bits) - 1
        if int(total[:d].max(initial=0)) > sum(weights) * levels or int(total[d:].max()) > len(valid):
            raise FailedClosed("validated aggregation: the two shares of the sum disagree with the inputs checked (a helper fault)")
        self.above = [int(v) for v in total[d:]]
        mean = total[:d].astype(np.float64) / (sum(weights) * levels) * (2 * self.clip) - self.clip
        tensors: dict[str, torch.Tensor] = {}
        offset = 0
        for name in self.names:
            size = math.prod(self.shapes[name])
            value = torch.from_numpy(mean[offset : offset + size].copy()).reshape(self.shapes[name])
            if name in self.base:  # rounding must not turn a variance zero or negative
                value = torch.maximum(value, self.base[name] * -(1 - 1e-3))
            tensors[name] = value
            offset += size
        return Aggregate(tensors, float(sum(weights)), len(valid), stats=self.stats(), left_out=dict(self.left_out))


def next_bound(bound: float, above: list[int], count: int, quantile: float, most: float) -> float:
    """The lowest level bound / 1.25^k that at most (1 - quantile) of the `count` clients lie above; 1.25 x the bound
    when more than that were clipped; never above `most`."""
    allowed = (1 - quantile) * count
    if above[0] > allowed:
        return min(most, bound * proof.NORM_STEP)
    k = next((i for i, n in enumerate(above) if n > allowed), len(above)) - 1  # the last level before too many lie above
    return min(most, bound * proof.NORM_STEP ** -k)
