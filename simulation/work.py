"""What a virtual client does in a round: the real client's round (client/local_round.py) on its slice of the shared
population. No network: every backend (in-process, a process pool, Ray workers) runs this same code on batches of
clients.

A virtual client's update is the one a real client with the same shard would send: the same `LocalRound` evaluates
the received model, fits the personal head, picks the trainer (SGD, FedSGD, DP-SGD with the client's own ledger, the
operator's --train-fn) and measures the update. The one difference is speed: when the trained part is a linear head on
cached features and the recipe is plain FedAvg SGD, the clients of a batch train together (simulation/heads.py),
equal to `LocalRound.train` to float rounding (tests/test_simulate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedtl.client.local_round import LocalRound
from fedtl.client.privacy import PrivacyBudget, RunPrivacy
from fedtl.common.codecs import UpdateSource
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.heads import linear_head
from fedtl.common.inputs import FeatureInputs, ImageInputs, Inputs
from fedtl.common.metrics import ClientMetrics
from fedtl.common.models import Network
from fedtl.common.plugin_refs import load
from fedtl.common.training import TrainResult
from fedtl.simulation.heads import HeadJob, train_heads


@dataclass(frozen=True)
class ClientJob:
    name: str
    train: np.ndarray  # the client's training examples: indices into the population's inputs
    holdout: np.ndarray  # its held-out examples (client-side evaluation, personal accuracy)
    seed: int  # client/local_round.round_seed of the run seed, the round and the client's shard
    evaluate: bool
    run_id: str = ""  # record-level DP-SGD calibrates its noise once per run


@dataclass
class ClientResult:
    name: str
    num_examples: int
    update: dict[str, torch.Tensor]  # new minus received values (FedAvg), or the mean gradient (FedSGD)
    metrics: ClientMetrics
    personal: torch.nn.Module | None = None  # the client's personal head after this round, when it keeps one


@dataclass
class Population:
    """Every virtual client's examples in one place: cached features (head training) or images (full fine-tuning)."""

    inputs: Inputs

    def of(self, indices: np.ndarray) -> Inputs:
        index = torch.as_tensor(indices, dtype=torch.int64)
        inputs = self.inputs
        if isinstance(inputs, FeatureInputs):
            return inputs.subset(index)
        assert isinstance(inputs, ImageInputs)
        return ImageInputs(labels=inputs.labels[index], start_stage=0, images=inputs.images[index], transform=inputs.transform)


@dataclass
class Trainer:
    """A private copy of the network (never the coordinator's), loaded with the round's global values per client."""

    net: Network
    first_trainable: int
    population: Population
    vectorise: bool = True
    ledgers: Path | None = None  # record-level DP-SGD: each virtual client's privacy ledger lives in ledgers/NAME/
    personal: dict[str, torch.nn.Module] = field(default_factory=dict)  # in-process backends keep personal heads here

    def train(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
              personal: dict[str, torch.nn.Module] | None = None) -> list[ClientResult]:
        heads = personal if personal is not None else self.personal
        self._load(state)
        rounds = {job.name: self._round(job, state, cfg) for job in jobs}
        for job in jobs:  # on the received model, as each client would before training
            rounds[job.name].evaluate_received()
        if cfg.statistics:  # a closed-form head's round: statistics, no training
            return [self._statistics(job, rounds[job.name]) for job in jobs]
        for job in jobs:
            if cfg.personal_epochs:
                heads[job.name] = rounds[job.name].personalise(heads.get(job.name))
        if self._vectorisable(cfg, state):
            results = self._train_heads(state, jobs, rounds, cfg)
        else:
            results = [self._train_one(state, job, rounds[job.name]) for job in jobs]
        for result in results:
            result.personal = heads.get(result.name) if cfg.personal_epochs else None
        return results

    def _round(self, job: ClientJob, state: dict[str, torch.Tensor], cfg: TrainConfig) -> LocalRound:
        holdout = self.population.of(job.holdout) if job.evaluate and len(job.holdout) else None
        own_train = load(cfg.train_fn, "--train-fn") if cfg.train_fn else None
        own_evaluate = load(cfg.evaluate_fn, "--evaluate-fn") if cfg.evaluate_fn else None
        metrics = ClientMetrics(download_seconds=0.0, feature_cache=isinstance(self.population.inputs, FeatureInputs))
        return LocalRound(self.net, self.first_trainable, cfg, job.seed, self.population.of(job.train), holdout, state, own_train,
                          own_evaluate, self._private(job) if cfg.private else None, metrics=metrics)

    def _private(self, job: ClientJob) -> RunPrivacy:
        """The virtual client's own ledger, on disk so that it lasts across rounds, worker processes and a resume."""
        if self.ledgers is None:
            raise RuntimeError("record-level DP-SGD in a simulation needs a folder for the virtual clients' ledgers")
        folder = self.ledgers / job.name
        folder.mkdir(parents=True, exist_ok=True)
        return PrivacyBudget(folder, 0.0).for_run(job.run_id)

    @staticmethod
    def _statistics(job: ClientJob, local: LocalRound) -> ClientResult:
        result = local.statistics()
        return ClientResult(job.name, result.num_examples, _materialise(result.update), result.metrics)

    def _train_one(self, state: dict[str, torch.Tensor], job: ClientJob, local: LocalRound) -> ClientResult:
        self._load(state)
        trained, grads = local.train()
        copied = _materialise(local.update(grads))  # the next client trains this network: keep the update now
        result = local.finish(trained, UpdateSource.of(copied))
        return ClientResult(job.name, result.num_examples, copied, result.metrics)

    # ---------------------------------------------------------------- linear heads trained together

    def _vectorisable(self, cfg: TrainConfig, state: dict[str, torch.Tensor]) -> bool:
        """Exact together: a linear head (maybe after dropout) alone on cached features, plain FedAvg SGD."""
        inputs = self.population.inputs
        if not self.vectorise or not isinstance(inputs, FeatureInputs) or inputs.start_stage != len(self.net.stages) - 1:
            return False
        if cfg.update_kind != UpdateKind.WEIGHT_DELTA or cfg.proximal_mu or cfg.private or cfg.train_fn:
            return False
        found = linear_head(self.net.stages[-1][1])
        return found is not None and set(state) == set(self.net.stage_tensors[-1]) and found[0].bias is not None

    def _train_heads(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], rounds: dict[str, LocalRound],
                     cfg: TrainConfig) -> list[ClientResult]:
        found = linear_head(self.net.stages[-1][1])
        assert found is not None
        linear, dropout = found
        names = {id(t): n for n, t in self.net.module.state_dict(keep_vars=True).items()}
        w_name, b_name = names[id(linear.weight)], names[id(linear.bias)]
        inputs = self.population.inputs
        assert isinstance(inputs, FeatureInputs)
        heads = train_heads(state[w_name], state[b_name], inputs.features, inputs.labels,
                            [HeadJob(torch.as_tensor(j.train, dtype=torch.int64), j.seed) for j in jobs], cfg, dropout)
        results = []
        for job, head in zip(jobs, heads):
            update = {w_name: head.weight - state[w_name], b_name: head.bias - state[b_name]}
            trained = TrainResult(head.seen, head.loss, head.accuracy, head.steps, head.seconds)
            result = rounds[job.name].finish(trained, UpdateSource.of(update))
            results.append(ClientResult(job.name, result.num_examples, update, result.metrics))
        return results

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        current = self.net.module.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                current[name].copy_(tensor)


def _materialise(source: UpdateSource) -> dict[str, torch.Tensor]:
    """An update's tensors, written out (it may read the live network, which the next client changes)."""
    out = {}
    for name, (dtype, shape) in source.specs.items():
        out[name] = torch.empty(shape, dtype=dtype)
        source.write(name, out[name])
    return out
