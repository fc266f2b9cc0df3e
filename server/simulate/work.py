"""What a virtual client does in a round, as a real client's runtime does it (client/runtime.py): evaluate the
received model on its held-out slice, fine-tune a personal head, train, and return its update. No network, no
files: every backend (in-process, a process pool, Ray workers) runs this same code on batches of clients.

Training reuses `common/training.py` (the real clients' loop, with their per-round seeds), so a simulated client's
update is the one a real client with the same shard would send. When the trained part is a linear head on cached
features, clients train together (server/simulate/heads.py); the result is the same to float rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from fedtl.common import user_code
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.plugin_refs import load
from fedtl.common.evaluation import evaluate
from fedtl.common.features import features_at
from fedtl.common.inputs import FeatureInputs, ImageInputs, Inputs
from fedtl.common.models import Network
from fedtl.common.training import fit_head, mean_gradient, train_local
from fedtl.server.simulate.heads import HeadJob, linear_head, train_heads


@dataclass(frozen=True)
class ClientJob:
    name: str
    train: np.ndarray  # the client's training examples: indices into the population's inputs
    holdout: np.ndarray  # its held-out examples (client-side evaluation, personal accuracy)
    seed: int  # client/runtime.round_seed of the run seed, the round and the client's shard
    evaluate: bool


@dataclass
class ClientResult:
    name: str
    num_examples: int
    update: dict[str, torch.Tensor]  # new minus received values (FedAvg), or the mean gradient (FedSGD)
    metrics: dict[str, float]
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
    personal: dict[str, torch.nn.Module] = field(default_factory=dict)  # in-process backends keep personal heads here

    def train(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
              personal: dict[str, torch.nn.Module] | None = None) -> list[ClientResult]:
        heads = personal if personal is not None else self.personal
        self._load(state)
        metrics = {job.name: self._before(job, cfg, heads) for job in jobs}
        if self._vectorisable(cfg, state):
            results = self._train_heads(state, jobs, cfg)
        else:
            results = [self._train_one(state, job, cfg) for job in jobs]
        for result in results:
            result.metrics.update(metrics[result.name])
            result.personal = heads.get(result.name) if cfg.personal_epochs else None
        return results

    # ---------------------------------------------------------------- before training: evaluate, personalise

    def _before(self, job: ClientJob, cfg: TrainConfig, heads: dict[str, torch.nn.Module]) -> dict[str, float]:
        """Client-side evaluation of the received model and the personal head, on the received backbone (runtime.py)."""
        metrics: dict[str, float] = {"download_seconds": 0.0, "feature_cache": float(isinstance(self.population.inputs, FeatureInputs))}
        held = self.population.of(job.holdout) if len(job.holdout) else None
        if job.evaluate and held is not None and cfg.evaluate_fn:
            own = user_code.evaluate_with(load(cfg.evaluate_fn, "--evaluate-fn"), self.net, held, cfg, job.seed)
            metrics.update(own, eval_examples=float(len(held)))
        elif job.evaluate and held is not None:
            result = evaluate(self.net, held)
            metrics.update(eval_loss=result.loss, eval_accuracy=result.accuracy, eval_examples=float(result.examples))
        if cfg.personal_epochs:
            head_index = len(self.net.stages) - 1
            train = features_at(self.net, self.population.of(job.train), head_index)
            head = heads.get(job.name) or copy.deepcopy(self.net.stages[head_index][1])
            fitted = fit_head(head, train, cfg, cfg.personal_epochs, job.seed ^ 0x5EED)
            heads[job.name] = head
            metrics.update(personal_train_loss=fitted.loss, personal_seconds=fitted.seconds)
            if job.evaluate and held is not None:
                with torch.no_grad():
                    logits = head(features_at(self.net, held, head_index).features)
                metrics["personal_accuracy"] = float((logits.argmax(1) == held.labels).float().mean())
        return metrics

    # ---------------------------------------------------------------- training

    def _vectorisable(self, cfg: TrainConfig, state: dict[str, torch.Tensor]) -> bool:
        """Exact together: a linear head (maybe after dropout) alone on cached features, plain FedAvg SGD."""
        inputs = self.population.inputs
        if not self.vectorise or not isinstance(inputs, FeatureInputs) or inputs.start_stage != len(self.net.stages) - 1:
            return False
        if cfg.update_kind != UpdateKind.WEIGHT_DELTA or cfg.proximal_mu or cfg.private or cfg.train_fn:
            return False
        found = linear_head(self.net.stages[-1][1])
        return found is not None and set(state) == set(self.net.stage_tensors[-1]) and found[0].bias is not None

    def _train_heads(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig) -> list[ClientResult]:
        found = linear_head(self.net.stages[-1][1])
        assert found is not None
        linear, dropout = found
        names = {id(t): n for n, t in self.net.module.state_dict(keep_vars=True).items()}
        w_name, b_name = names[id(linear.weight)], names[id(linear.bias)]
        inputs = self.population.inputs
        assert isinstance(inputs, FeatureInputs)
        heads = train_heads(state[w_name], state[b_name], inputs.features, inputs.labels,
                            [HeadJob(torch.as_tensor(j.train, dtype=torch.int64), j.seed) for j in jobs], cfg, dropout)
        return [ClientResult(job.name, min(h.seen, len(job.train)), {w_name: h.weight - state[w_name], b_name: h.bias - state[b_name]},
                             {"train_loss": h.loss, "train_accuracy": h.accuracy, "train_seconds": h.seconds, "steps": float(h.steps)})
                for job, h in zip(jobs, heads)]

    def _train_one(self, state: dict[str, torch.Tensor], job: ClientJob, cfg: TrainConfig) -> ClientResult:
        self._load(state)
        inputs = self.population.of(job.train)
        if cfg.train_fn:  # the operator's own loop, as a real client runs it (client/runtime.py)
            reported, seconds = user_code.train_with(load(cfg.train_fn, "--train-fn"), self.net, self.first_trainable, inputs, cfg, job.seed)
            current = self.net.module.state_dict()
            return ClientResult(job.name, len(inputs), {n: current[n].detach() - state[n] for n in state}, {**reported, "train_seconds": seconds})
        if cfg.update_kind == UpdateKind.GRADIENT:
            grads, result = mean_gradient(self.net, self.first_trainable, inputs, cfg, job.seed)
            update, examples = {n: grads[n] if n in grads else torch.zeros_like(state[n]) for n in state}, result.num_examples
        else:
            reference = {n: t for n, t in state.items()} if cfg.proximal_mu > 0 else None
            result = train_local(self.net, self.first_trainable, inputs, cfg, job.seed, reference)
            current = self.net.module.state_dict()
            update = {n: current[n].detach() - state[n] for n in state}  # buffers too: what update_source sends
            examples = min(result.num_examples, len(inputs))
        return ClientResult(job.name, examples, update, {"train_loss": result.loss, "train_accuracy": result.accuracy,
                                                         "train_seconds": result.seconds, "steps": float(result.steps)})

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        current = self.net.module.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                current[name].copy_(tensor)

