"""A client's own privacy budget (record-level DP): its ledger of every DP-SGD round its data went through, kept in
its work directory, and its owner's limit (--max-epsilon), checked before any training.

It is the data owner's guarantee, so it lives with the data: the ledger is written (atomically, fsynced) before the
update that spends the budget leaves the machine, read back on every start, never reset by the coordinator; a damaged
ledger stops the client rather than start again from zero. A client with a limit refuses non-private tasks.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fedtl.common import checkpoint, heads
from fedtl.common.config import TrainConfig, TrainTask
from fedtl.common.errors import BudgetReached, DataUnavailable, PrivacyRefused
from fedtl.common.inputs import Inputs
from fedtl.common.models import Network
from fedtl.common.privacy.accountant import EVERYONE, POISSON, Steps, calibrate, epsilon, from_json, to_json
from fedtl.common.privacy.dpsgd import private_train, steps_per_round
from fedtl.common.training import Progress, TrainResult

logger = logging.getLogger(__name__)
HEAD = "/head"  # the ledger's noise for a run's head statistics is kept under its run id plus this


class PrivacyLedger:
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "privacy_ledger.json"
        self.steps: list[Steps] = []
        self.noise: dict[str, float] = {}  # run id -> the noise multiplier this client calibrated for it
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.steps, self.noise = from_json(data["steps"]), {str(k): float(v) for k, v in data.get("noise", {}).items()}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataUnavailable(f"the privacy ledger {self.path} is unreadable ({exc}); it records what this client's "
                                      "data has already spent, so it is never started afresh: restore it, or remove it knowingly") from None

    def epsilon(self, delta: float, method: str, extra: list[Steps] | None = None) -> float:
        return epsilon([*self.steps, *(extra or [])], delta, method)

    def remember_noise(self, run_id: str, noise: float) -> None:
        self.noise[run_id] = noise
        self._write()

    def record(self, steps: Steps) -> None:
        self.steps.append(steps)
        self._write()

    def _write(self) -> None:
        checkpoint.write_json_atomic(self.path, {"steps": to_json(self.steps), "noise": self.noise})


class PrivacyBudget:
    def __init__(self, workdir: Path, max_epsilon: float, min_client_noise: float = 0.0, delta: float = 1e-5) -> None:
        self.ledger = PrivacyLedger(workdir)
        self.max_epsilon = max_epsilon  # 0: no limit of the owner's own
        self.min_client_noise = min_client_noise  # 0: no floor on the distributed noise of its own
        self.delta = delta  # the owner's δ: --max-epsilon holds at it, and a coordinator's larger δ is refused

    def check_task(self, task: TrainTask) -> None:
        if self.max_epsilon and not task.config.private:
            raise PrivacyRefused(f"this client trains only under record-level DP (its --max-epsilon {self.max_epsilon:g}), but the "
                                 "server asks for non-private training: ask the coordinator to run with --dp-clip and --dp-epsilon")
        if task.config.private and task.config.dp_delta > self.delta:
            raise PrivacyRefused(f"the coordinator runs record-level DP at δ = {task.config.dp_delta:g}, larger than this data owner's "
                                 f"--dp-delta {self.delta:g} (a larger δ is a weaker guarantee, and would let more rounds fit under "
                                 f"--max-epsilon): ask the coordinator for --dp-delta {self.delta:g} or less")
        noise = task.secagg.noise if task.secagg is not None else 0.0
        if self.min_client_noise and noise < self.min_client_noise:
            raise PrivacyRefused(f"this client sends its update only masked, with distributed noise of multiplier >= "
                                 f"{self.min_client_noise:g} (its --min-client-dp-noise), but round {task.round} has "
                                 f"{'no secure aggregation' if task.secagg is None else f'a multiplier of {noise:.4g}'}: ask the "
                                 "coordinator to run with --secure-aggregation --client-dp-clip C and a large enough --client-dp-noise")

    def for_run(self, run_id: str) -> RunPrivacy:
        return RunPrivacy(self, run_id)

    def _check(self, config: TrainConfig, steps: Steps, what: str) -> None:
        """The owner's limit, at the owner's δ (whatever the coordinator's)."""
        after = self.ledger.epsilon(self.delta, config.dp_accountant, [steps])
        if self.max_epsilon and after > self.max_epsilon:
            raise BudgetReached(f"privacy budget: {what} would take this client's ε to {after:.3f} at δ = {self.delta:g}, "
                                f"over its --max-epsilon {self.max_epsilon:g} (spent: "
                                f"{self.ledger.epsilon(self.delta, config.dp_accountant):.3f}); it trains no more")

    def release(self, kind: str, stats: dict[str, torch.Tensor], examples: int, config: TrainConfig,
                run_id: str) -> tuple[dict[str, torch.Tensor], float, float]:
        """A closed-form head's statistics with Gaussian noise (common/heads.py `noised`), within the owner's limit; the
        ledger has the release before this returns. (the noised statistics, this client's ε after it, the multiplier)"""
        noise = config.dp_noise or self._head_noise(run_id, config)
        step = Steps(EVERYONE, noise)
        self._check(config, step, "the head's statistics")
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))  # not the run's seed: see dpsgd
        out = heads.noised(kind, stats, examples, config.feature_clip, noise, generator)
        self.ledger.record(step)  # before the statistics exist outside this process
        spent = self.ledger.epsilon(config.dp_delta, config.dp_accountant)
        logger.info("DP statistics: class sums of %d examples (features clipped to %g) noised with multiplier %.3f: this "
                    "client's ε is now %.3f at δ = %g", examples, config.feature_clip, noise, spent, config.dp_delta)
        return out, spent, noise

    def release_counts(self, target: float) -> float:
        """A statistics job's label counts (L2 sensitivity 1) with Gaussian noise spending `target` ε at the owner's δ,
        within its limit; the ledger has the release before this returns. The noise's standard deviation."""
        noise = calibrate(target, self.delta, lambda z: [Steps(EVERYONE, z)], "rdp")
        step = Steps(EVERYONE, noise)
        after = self.ledger.epsilon(self.delta, "rdp", [step])
        if self.max_epsilon and after > self.max_epsilon:
            raise BudgetReached(f"privacy budget: the statistics would take this site's ε to {after:.3f} at δ = {self.delta:g}, over "
                                f"its --max-epsilon {self.max_epsilon:g}")
        self.ledger.record(step)
        return noise

    def _head_noise(self, run_id: str, config: TrainConfig) -> float:
        """The multiplier that spends the head round's --dp-epsilon (the coordinator's share of the run's) on one release;
        kept per run: later DP-SGD rounds calibrate the rest of the run's budget around it."""
        key = f"{run_id}{HEAD}"
        if key not in self.ledger.noise:
            self.ledger.remember_noise(key, calibrate(config.dp_epsilon, config.dp_delta, lambda z: [Steps(EVERYONE, z)],
                                                      config.dp_accountant))
        return self.ledger.noise[key]

    def train(self, net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig, run_id: str,
              progress: Progress | None) -> tuple[TrainResult, float, float]:
        """One round of DP-SGD, within the owner's limit; the ledger has the round before this returns.
        (what training did, this client's ε after the round, the noise multiplier)"""
        rate, steps = steps_per_round(len(inputs), config)
        noise = config.dp_noise or self._calibrated(run_id, len(inputs), rate, steps, config)
        self._check(config, Steps(POISSON, noise, steps, rate=rate), "this round")
        result, done = private_train(net, first_trainable, inputs, config, noise, progress)
        self.ledger.record(done)  # before the update exists outside this process
        spent = self.ledger.epsilon(config.dp_delta, config.dp_accountant)
        logger.info("DP-SGD: %d steps at sampling rate %.4f, noise multiplier %.3f, clip %g: this client's ε is now %.3f at δ = %g",
                    done.count, rate, noise, config.dp_clip, spent, config.dp_delta)
        return result, spent, noise

    def _calibrated(self, run_id: str, examples: int, rate: float, steps: int, config: TrainConfig) -> float:
        """The noise that spreads --dp-epsilon over --dp-rounds rounds of this client's own steps (after the run's head
        statistics, when it released them); kept per run, so a restarted client keeps the noise it started with."""
        if run_id not in self.ledger.noise:
            rounds = max(1, config.dp_rounds)
            head = self.ledger.noise.get(f"{run_id}{HEAD}")  # this run's head statistics were released: in the same budget
            before = [Steps(EVERYONE, head)] if head else []
            noise = calibrate(config.dp_epsilon, config.dp_delta,
                              lambda z: [*before, Steps(POISSON, z, steps * rounds, rate=rate)], config.dp_accountant)
            logger.info("DP-SGD: noise multiplier %.4f spends ε = %g at δ = %g over %d rounds of %d examples (batch %d)", noise,
                        config.dp_epsilon, config.dp_delta, rounds, examples, config.batch_size)
            self.ledger.remember_noise(run_id, noise)
        return self.ledger.noise[run_id]


@dataclass
class RunPrivacy:
    """A client's budget as one run spends it: what a local round calls for DP-SGD and for noised head statistics."""

    budget: PrivacyBudget
    run_id: str

    def train(self, net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig,
              progress: Progress | None) -> tuple[TrainResult, float, float]:
        return self.budget.train(net, first_trainable, inputs, config, self.run_id, progress)

    def release(self, kind: str, stats: dict[str, torch.Tensor], examples: int,
                config: TrainConfig) -> tuple[dict[str, torch.Tensor], float, float]:
        return self.budget.release(kind, stats, examples, config, self.run_id)
