"""Client-level DP-FedAvg around the mean (McMahan et al. 2018), with adaptive clipping (Andrew et al. 2021).

Each update is clipped to L2 norm C (all its floating tensors together: everything a client sends is released),
the clipped updates are averaged, and Gaussian noise of std z·C·s is added to the average, where s is the largest
weight share (uniform weights: 1 / clients). The coordinator is trusted to add the noise; what it protects is every
client's whole contribution, against everyone who sees a model it released (clients, users of the final model).

The federation's ledger (one Gaussian step per released round, with the sampling of that round's selection: k of N
connected without replacement, or everyone) is written to the run directory, fsynced, before the round's aggregate
goes anywhere: a model a client may have seen is always counted, even if the coordinator is killed before its
checkpoint. A resumed run continues that ledger. `--max-epsilon` stops the run before a round that would exceed it.

Adaptive clipping: the noised share of clients whose update was within C moves C toward the target quantile γ,
C ← C·exp(−η(b̃ − γ)); the count's noise (std σ_b) takes part of the budget, so the update's noise multiplier is
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), as in the paper, and the ledger still records z.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from fedtl.common import checkpoint
from fedtl.common.privacy.accountant import EVERYONE, WITHOUT_REPLACEMENT, Steps, calibrate, epsilon, from_json, to_json
from fedtl.server.strategies.base import Aggregate, Aggregator, BudgetSpent, RoundContext
from fedtl.server.strategies.dp_settings import ClientDPSettings
from fedtl.server.strategies.stacked import AggregationError
from fedtl.server.strategies.wrapping import WrappedAggregator, Wrapper
from fedtl.server.validation import Update

logger = logging.getLogger(__name__)


class ClientLevelDP(Wrapper):
    def __init__(self, inner, settings: ClientDPSettings, ledger_path: Path | None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.s, self.path = settings, ledger_path
        self.clip, self.noise = settings.clip, settings.noise
        self.steps: list[Steps] = []
        self.loaded = False  # read at the first round: by then a new run has set an earlier run's ledger aside


    # ------------------------------------------------------------------ the ledger

    def _read_ledger(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            self.steps, self.noise, self.clip = from_json(data["steps"]), float(data["noise"]), float(data["clip"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AggregationError(f"the privacy ledger {self.path} is unreadable ({exc}); it records what the federation has "
                                   "already spent, so the run does not start again from zero: restore it, or start a new run") from None

    def _write_ledger(self) -> float:
        """Write the ledger (with its ε, for whoever reads the file) and return that ε."""
        spent = self.epsilon()
        if self.path is not None:
            checkpoint.write_json_atomic(self.path, {"steps": to_json(self.steps), "noise": self.noise, "clip": self.clip,
                                                     "delta": self.s.delta, "accountant": self.s.accountant, "epsilon": spent})
        return spent

    def epsilon(self, extra: list[Steps] | None = None) -> float:
        return epsilon([*self.steps, *(extra or [])], self.s.delta, self.s.accountant)

    @staticmethod
    def step_of(context: RoundContext, noise: float) -> Steps:
        k, population = len(context.participants), max(context.population, len(context.participants))
        if k >= population:
            return Steps(EVERYONE, noise)
        return Steps(WITHOUT_REPLACEMENT, noise, population=population, sample=k)

    # ------------------------------------------------------------------ a round

    def load(self) -> None:
        """Read an earlier run's ledger, once (at the first round: by then a new run has set an earlier one aside)."""
        if not self.loaded:
            if self.path is not None and self.path.exists():
                self._read_ledger()
            self.loaded = True

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        self.load()
        if not self.noise:
            self.noise = calibrate(self.s.target_epsilon, self.s.delta,
                                   lambda z: [dataclasses.replace(self.step_of(context, z), count=self.s.rounds)], self.s.accountant)
            logger.info("client-level DP: noise multiplier %.4f reaches ε = %g at δ = %g after %d rounds of %d of %d clients",
                        self.noise, self.s.target_epsilon, self.s.delta, self.s.rounds, len(context.participants),
                        max(context.population, len(context.participants)))
            self._write_ledger()
        if self.s.max_epsilon:
            after = self.epsilon([self.step_of(context, self.noise)])
            if after > self.s.max_epsilon:
                raise BudgetSpent(f"privacy budget: round {context.round} would bring the federation's ε to {after:.3f} at "
                                  f"δ = {self.s.delta:g}, over --max-epsilon {self.s.max_epsilon:g} (spent so far: {self.epsilon():.3f})")
        count_noise = self.s.count_noise or len(context.participants) / 20
        update_noise = self.noise
        if self.s.quantile:
            if 2 * count_noise <= self.noise:
                raise AggregationError(f"adaptive clipping: the count's noise ({count_noise:g}) must exceed half the noise multiplier "
                                       f"({self.noise:.3f}); raise --client-dp-count-noise or select more clients per round")
            update_noise = (self.noise ** -2 - (2 * count_noise) ** -2) ** -0.5
        names = frozenset(n for n, t in template.items() if t.is_floating_point())
        return _PrivateMean(self.inner.open(template, context), self, context, names, update_noise, count_noise)

    def released(self, context: RoundContext, within: int, answered: int, count_noise: float) -> float:
        """A round's aggregate is about to leave the fold thread: count it, durably, and move the adaptive clip."""
        self.steps.append(self.step_of(context, self.noise))
        if self.s.quantile and answered:
            share = (within + float(_gaussian((), count_noise))) / answered
            self.clip *= math.exp(-self.s.clip_lr * (share - self.s.quantile))
        return self._write_ledger()  # one accountant evaluation a round, not two

    def state_dict(self) -> dict[str, torch.Tensor]:
        mine = {"dp.clip": torch.tensor(self.clip, dtype=torch.float64), "dp.noise": torch.tensor(self.noise, dtype=torch.float64),
                "dp.rounds": torch.tensor(len(self.steps), dtype=torch.float64)}
        return {**self.inner.state_dict(), **mine}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        # the ledger file, written before each release, is the truth; a checkpoint can only lag behind it
        if self.path is None or not self.path.exists():
            self.clip = float(state.get("dp.clip", torch.tensor(self.clip)))
            self.noise = float(state.get("dp.noise", torch.tensor(self.noise)))
        self.inner.load_state_dict({k: v for k, v in state.items() if not k.startswith("dp.")})

    def describe(self) -> str:
        clip = f"adaptive clip (quantile {self.s.quantile:g}, from {self.s.clip:g})" if self.s.quantile else f"clip {self.s.clip:g}"
        noise = f"noise {self.s.noise:g}" if self.s.noise else f"noise for ε = {self.s.target_epsilon:g}"
        return f"{self.inner.describe()}, client-level DP ({clip}, {noise}, {self.s.weighting} weights, δ = {self.s.delta:g})"


class _PrivateMean(WrappedAggregator):
    def __init__(self, inner: Aggregator, owner: ClientLevelDP, context: RoundContext, names: frozenset[str],
                 update_noise: float, count_noise: float) -> None:
        super().__init__(inner)
        self.owner, self.context, self.names = owner, context, names
        self.update_noise, self.count_noise, self.clip = update_noise, count_noise, owner.clip
        self.weights: list[float] = []
        self.within = 0

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        norm = update.norm(self.names)
        if norm <= self.clip:
            self.within += 1
        else:
            scale = self.clip / norm
            for name in self.names:
                update.tensors[name].mul_(scale)
            update.forget_norms(self.names)
            self.counted("clipped")
        weight = 1.0 if self.owner.s.weighting == "uniform" else weight
        self.weights.append(weight)
        return update, weight

    def result(self) -> Aggregate:
        aggregate = super().result()
        share = max(self.weights) / sum(self.weights)  # uniform: 1 / clients
        std = self.update_noise * self.clip * share
        for name in self.names:
            tensor = aggregate.tensors[name]
            tensor.add_(_gaussian(tensor.shape, std))
        spent = self.owner.released(self.context, self.within, len(self.weights), self.count_noise)
        aggregate.metrics.update(epsilon=spent, dp_clip=self.clip, dp_noise_std=std)
        return aggregate


def _gaussian(shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
    """Noise from the operating system's randomness: the run's seed is in the run directory, and noise anyone could
    reproduce from it would protect nothing."""
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std
