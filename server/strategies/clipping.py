"""Norm bounding around any strategy: an update whose L2 norm exceeds the bound is scaled down to it (direction
kept), so no single client can move the model further than the bound. Parameters and buffers (BatchNorm
statistics) are bounded separately, each as a group: buffers are updates too.

The bound is fixed (`--max-update-norm`), or adaptive (`--norm-quantile Q`): the Q-quantile of the update norms
seen in earlier rounds, kept as a running estimate (half the old bound, half the last round's quantile) and
checkpointed. A round with nothing seen before it (round 1) is bounded by its own norms' quantile: its updates are held
until the round closes, then clipped and folded (otherwise one ×1000 update in round 1 wrecked the model for good).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext
from fedtl.server.strategies.wrapping import WrappedAggregator, Wrapper
from fedtl.server.validation import Expectation, Update

GROUPS = ("parameters", "buffers")


class NormClip(Wrapper):
    def __init__(self, inner, max_norm: float = 0.0, quantile: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        if not (max_norm > 0 or 0 < quantile < 1):
            raise ValueError("a norm bound needs max_norm > 0 or 0 < quantile < 1")
        self.max_norm, self.quantile = max_norm, quantile
        self.running = {group: math.nan for group in GROUPS}  # adaptive bounds learnt so far

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        names = {"parameters": frozenset(n for n in template if n in context.parameters),
                 "buffers": frozenset(n for n, t in template.items() if n not in context.parameters and t.is_floating_point())}
        bounds = {g: self.max_norm if self.max_norm else self.running[g] for g in GROUPS}
        if self.quantile and any(math.isnan(bounds[g]) for g in GROUPS if names[g]):
            return _Bootstrap(self.inner.open(template, context), names, self)
        return _Clipping(self.inner.open(template, context), bounds, names, self)

    def learn(self, norms: Mapping[str, list[float]]) -> None:
        """After a round: move the adaptive bounds toward this round's quantile of the norms."""
        if not self.quantile:
            return
        for group, seen in norms.items():
            if seen:
                q = float(np.quantile(seen, self.quantile))
                old = self.running[group]
                self.running[group] = q if math.isnan(old) else 0.5 * old + 0.5 * q

    def state_dict(self) -> dict[str, torch.Tensor]:
        mine = {f"clip.{g}": torch.tensor(self.running[g], dtype=torch.float64) for g in GROUPS}
        return {**self.inner.state_dict(), **mine}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for g in GROUPS:
            if f"clip.{g}" in state:
                self.running[g] = float(state[f"clip.{g}"])
        self.inner.load_state_dict({k: v for k, v in state.items() if not k.startswith("clip.")})

    def describe(self) -> str:
        bound = f"L2 norm {self.max_norm:g}" if self.max_norm else f"the running {self.quantile:g}-quantile of update norms"
        return f"{self.inner.describe()}, updates clipped to {bound} (parameters and buffers each)"


class _Clipping(WrappedAggregator):
    def __init__(self, inner: Aggregator, bounds: Mapping[str, float], names: Mapping[str, frozenset[str]], owner: NormClip) -> None:
        super().__init__(inner)
        self.bounds, self.names, self.owner = bounds, names, owner
        self.norms: dict[str, list[float]] = {g: [] for g in GROUPS}

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        clipped = False
        for group in GROUPS:
            names = self.names[group]
            if not names:
                continue
            self.norms[group].append(update.norm(names))
            bound = self.bounds[group]
            if math.isfinite(bound) and clip_to_norm(update, names, bound):
                clipped = True
        if clipped:
            self.counted("clipped")
        return update, weight

    def result(self) -> Aggregate:
        aggregate = super().result()
        self.owner.learn(self.norms)
        return aggregate


class _Bootstrap(Aggregator):
    """The adaptive bound's first round: hold every update (a copy, so the intake may reuse its buffers); at the close
    the quantile of this round's own norms is the bound, and the held updates go through `_Clipping` with it, in
    arrival order. One round's updates are held in memory, once; later rounds stream through `_Clipping`."""

    def __init__(self, inner: Aggregator, names: Mapping[str, frozenset[str]], owner: NormClip) -> None:
        self.inner, self.names, self.owner, self.protocol = inner, names, owner, inner.protocol
        self.held: list[tuple[str, Update, float]] = []
        self.clipping: _Clipping | None = None  # at the close: what the held updates go through

    def expectation(self, base: Expectation) -> Expectation:
        return self.inner.expectation(base)

    def add(self, client: str, update: Update, weight: float) -> None:
        copy = Update({n: t.detach().clone() for n, t in update.tensors.items()}, dict(update.norms),
                      {n: t.clone() for n, t in update.support.items()})
        self.held.append((client, copy, weight))

    @property
    def count(self) -> int:
        return self.clipping.count if self.clipping is not None else len(self.held)

    def stats(self) -> dict[str, int]:
        return (self.clipping or self.inner).stats()

    def result(self) -> Aggregate:
        bounds = {g: float(np.quantile([u.norm(self.names[g]) for _, u, _ in self.held], self.owner.quantile))
                  if self.names[g] and self.held else math.inf for g in GROUPS}
        self.clipping = _Clipping(self.inner, bounds, self.names, self.owner)  # clips, counts, and learns from these norms
        for client, update, weight in self.held:
            self.clipping.add(client, update, weight)
        self.held = []
        return self.clipping.result()


def clip_to_norm(update: Update, names: frozenset[str], max_norm: float) -> bool:
    """Scale the named tensors in place so their joint L2 norm is at most max_norm; True when scaled."""
    norm = update.norm(names)
    if norm <= max_norm:
        return False
    scale = max_norm / norm
    for name in names:
        update.tensors[name].mul_(scale)
    update.forget_norms(names)
    return True
