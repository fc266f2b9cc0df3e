"""Dishonest clients for the robustness benchmark and tests, built on the real client runtime (not flags of the
product client): each changes what an honest ClientRuntime would send, or the data it trains on.

- sign_flip: the honest update, negated and scaled (x -4)
- gaussian: noise of 10x the honest update's norm instead of an update
- scaling: model replacement: the honest update x the number of clients (Bagdasaryan et al. 2020)
- label_flip: trains honestly on labels c -> 9 - c (data poisoning)
- alie: "a little is enough" (Baruch et al. 2019): colluders send mean - z * std of their honest updates
- inflated: claims 10 million examples with a sign-flipped update
- backdoor: a 4x4 white square in the corner relabelled to class 0 on half its data, update boosted (x n / 2)
- min_max: AGR-agnostic min-max (Shejwalkar & Houmansadr, NDSS 2021), omniscient: colluders see every honest update of the
  round (honest clients run `Witness`) and send mean - gamma * mean / |mean|, gamma as large as keeps the forged update's
  farthest distance to an honest one within the largest distance between two honest ones: distance-based rules cannot
  tell it from an honest update
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from fedtl.client.local_round import LocalResult
from fedtl.client.runtime import ClientRuntime
from fedtl.client.shard import Shard
from fedtl.common.codecs import UpdateSource
from fedtl.common.config import DataAssignment, TrainTask
from fedtl.common.data import ImageSet

ATTACKS = ("sign_flip", "gaussian", "scaling", "label_flip", "alie", "inflated", "backdoor", "min_max")
OMNISCIENT = ("min_max",)  # honest clients show their updates to the colluders
# the attacks of issue 30's table (bench/robustness/table.py): the honest update scaled, or one BatchNorm buffer forged
SCALED = {"sign_flip": -4.0, "inflated": -1.0, "sign_flip_x10": -10.0, "boost_x1000": 1000.0}
BUFFERS = {"bn_mean_plus_1000": ("running_mean", 1000.0), "bn_var_minus_100": ("running_var", -100.0)}  # delta added
TARGET = 0  # the backdoor's target class


def trigger(images: torch.Tensor) -> torch.Tensor:
    """The backdoor pattern: a white 4x4 square in the bottom-right corner (uint8 N x C x H x W)."""
    out = images.clone()
    size = max(2, images.shape[-1] // 8)
    out[..., -size:, -size:] = 255
    return out


@dataclass
class Colluders:
    """Where colluding attackers meet: each deposits its honest update for the round and waits for the others (and, for an
    omniscient attack, for the `witnesses`' honest updates too)."""

    count: int
    honest_clients: int  # n, the clients of a round
    witnesses: int = 0  # honest clients whose updates the colluders see
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _rounds: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def z(self) -> float:
        n, f = self.honest_clients, self.count
        s = math.floor(n / 2 + 1) - f
        return NormalDist().inv_cdf((n - s) / n)

    def witness(self, round_number: int, honest: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._rounds.setdefault(round_number, []).append(honest)
            self._lock.notify_all()

    def gather(self, round_number: int, mine: dict[str, torch.Tensor], timeout: float = 300.0) -> dict[str, torch.Tensor]:
        """Every update seen this round (the colluders' honest ones and the witnesses'), stacked per tensor in float64."""
        with self._lock:
            held = self._rounds.setdefault(round_number, [])
            held.append(mine)
            self._lock.notify_all()
            self._lock.wait_for(lambda: len(held) >= self.count + self.witnesses, timeout)
            return {k: torch.stack([u[k].double() for u in held]) for k in mine}

    def alie(self, round_number: int, mine: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacked, z = self.gather(round_number, mine), self.z()
        return {k: (v.mean(0) - z * v.std(0, unbiased=False)).to(mine[k].dtype) for k, v in stacked.items()}

    def min_max(self, round_number: int, mine: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacked = self.gather(round_number, mine)
        flat = torch.cat([v.flatten(1) for v in stacked.values()], 1)
        mean = flat.mean(0)
        direction = -mean / mean.norm()  # the inverse unit vector: stronger against multi-krum here than the inverse std
        forged = (mean + min_max_gamma(flat, direction) * direction).split([v[0].numel() for v in stacked.values()])
        return {k: part.reshape(v.shape[1:]).to(mine[k].dtype) for (k, v), part in zip(stacked.items(), forged)}


def min_max_gamma(honest: torch.Tensor, direction: torch.Tensor, iterations: int = 40) -> float:
    """The largest gamma (bisection) with max_i |mean + gamma * direction - g_i| <= max_ij |g_i - g_j| (rows g_i)."""
    mean, limit = honest.mean(0), float(torch.cdist(honest, honest).max())

    def fits(gamma: float) -> bool:
        return float((honest - (mean + gamma * direction)).norm(dim=1).max()) <= limit

    low, high = 0.0, 1.0
    while fits(high) and high < 1e6:
        low, high = high, 2 * high
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _materialise(update: UpdateSource) -> dict[str, torch.Tensor]:
    out = {}
    for name, (dtype, shape) in update.specs.items():
        tensor = torch.empty(shape, dtype=dtype)
        update.write(name, tensor)
        out[name] = tensor
    return out


class AttackRuntime(ClientRuntime):
    """A ClientRuntime that trains as an honest one would (on possibly poisoned data), then sends something else."""

    def __init__(self, *args: object, attack: str, clients: int, colluders: Colluders | None = None, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        if attack not in (*ATTACKS, *SCALED, *BUFFERS):
            raise ValueError(f"attack {attack!r}: one of {', '.join(dict.fromkeys((*ATTACKS, *SCALED, *BUFFERS)))}")
        self.attack, self.clients, self.colluders = attack, clients, colluders
        self.rng = np.random.default_rng(abs(hash(self.name)) % (2**32))

    def _load_shard(self, assignment: DataAssignment) -> Shard:
        fresh = self._shard is None or self._shard.assignment != assignment
        shard = super()._load_shard(assignment)
        if fresh and self.attack in ("label_flip", "backdoor"):
            shard = self._poison(shard)
            self._shard = shard
        return shard

    def _poison(self, shard: Shard) -> Shard:
        images, labels = shard.train.images.clone(), shard.train.labels.clone()
        if self.attack == "label_flip":
            labels = (len(shard.train.classes) - 1) - labels
        else:
            chosen = torch.from_numpy(self.rng.permutation(len(labels))[: len(labels) // 2])
            images[chosen] = trigger(images[chosen])
            labels[chosen] = TARGET
        train = ImageSet(images, labels, shard.train.classes)
        return Shard(shard.assignment, train, shard.holdout, train.digest(), shard.holdout_digest)

    def run_round(self, task: TrainTask, download: Callable, progress: object = None) -> LocalResult:  # type: ignore[override]
        outcome = super().run_round(task, download, progress)  # type: ignore[arg-type]
        if self.attack == "label_flip":
            return outcome
        honest = _materialise(outcome.update)
        sent, examples = self._forge(task.round, honest), outcome.num_examples
        if self.attack == "inflated":
            examples = 10_000_000
        return LocalResult(examples, outcome.kind, UpdateSource.of(sent), outcome.metrics)

    def _forge(self, round_number: int, honest: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # BatchNorm variances stay honest: the coordinator refuses an update that would make one negative, so an attacker
        # who wants in (full fine-tuning trains them) leaves them alone and forges everything else
        floats = {k: v for k, v in honest.items() if v.is_floating_point() and not k.endswith("running_var")}
        if self.attack in SCALED:
            return {k: v * SCALED[self.attack] if k in floats else v for k, v in honest.items()}
        if self.attack in BUFFERS:  # everything else honest: only the buffer's statistics are forged
            suffix, delta = BUFFERS[self.attack]
            return {k: v + delta if k.endswith(suffix) else v for k, v in honest.items()}
        if self.attack == "scaling":
            return {k: v * self.clients if k in floats else v for k, v in honest.items()}
        if self.attack == "backdoor":
            return {k: v * (self.clients / 2) if k in floats else v for k, v in honest.items()}
        if self.attack == "gaussian":
            norm = math.sqrt(sum(float(v.double().norm()) ** 2 for v in floats.values())) or 1.0
            total = sum(v.numel() for v in floats.values())
            sigma = 10 * norm / math.sqrt(total)
            return {k: torch.from_numpy(self.rng.normal(0, sigma, v.shape)).to(v.dtype) if k in floats else v for k, v in honest.items()}
        assert self.attack in ("alie", "min_max") and self.colluders is not None
        craft = self.colluders.alie if self.attack == "alie" else self.colluders.min_max
        forged = craft(round_number, {k: v for k, v in honest.items() if k in floats})
        return {k: forged.get(k, v) for k, v in honest.items()}


class Witness(ClientRuntime):
    """An honest client whose updates an omniscient attacker sees: it trains and sends honestly, and shows the colluders
    what it sends."""

    def __init__(self, *args: object, colluders: Colluders, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.colluders = colluders

    def run_round(self, task: TrainTask, download: Callable, progress: object = None) -> LocalResult:  # type: ignore[override]
        outcome = super().run_round(task, download, progress)  # type: ignore[arg-type]
        honest = _materialise(outcome.update)
        self.colluders.witness(task.round, {k: v for k, v in honest.items() if v.is_floating_point() and not k.endswith("running_var")})
        return LocalResult(outcome.num_examples, outcome.kind, UpdateSource.of(honest), outcome.metrics)
