"""One client round, with no network and no files: the received model, a shard's inputs and the task's recipe in; the
update and typed metrics out.

The gRPC client (client/runtime.py) and the simulator's virtual clients (simulation/work.py) both run this, so a client
feature (client-side evaluation, a personal head, the choice of trainer: FedAvg/FedProx SGD, FedSGD's gradient,
record-level DP-SGD, the operator's own loop) is written once and behaves the same in a simulation as on a real site.
The steps are methods so that the simulator can train many linear heads at once between `personalise` and `finish`
(simulation/heads.py, proven equal to `train`); everything else about the round is this code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedtl.client.update import update_source
from fedtl.common import batchnorm, heads, user_code
from fedtl.common.codecs import UpdateSource
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.errors import DataUnavailable
from fedtl.common.evaluation import evaluate
from fedtl.common.features import features_at
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.metrics import ClientMetrics
from fedtl.common.models import Network
from fedtl.common.training import Progress, TrainResult, fit_head, mean_gradient, train_local

PERSONAL_SEED = 0x5EED  # the personal head draws from its own stream: seed ^ this


def round_seed(run_seed: int, round_number: int, identity: str) -> int:
    """Per-client, per-round seed: the same after a restart, different across clients and rounds."""
    digest = hashlib.sha256(f"{run_seed}:{round_number}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class PrivateTraining(Protocol):
    """Record-level DP within the data owner's budget (client/privacy.py `RunPrivacy`): the ledger has the round on return."""

    def train(self, net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig,
              progress: Progress | None) -> tuple[TrainResult, float, float]: ...  # (result, ε after the round, noise multiplier)

    def release(self, kind: str, stats: dict[str, torch.Tensor], examples: int,
                config: TrainConfig) -> tuple[dict[str, torch.Tensor], float, float]: ...  # noised head statistics, ε, multiplier


@dataclass
class LocalResult:
    num_examples: int  # the weight the client claims: the shard it trained on (FedAvg) or the examples its gradient saw
    kind: UpdateKind
    update: UpdateSource  # may read the live model: encode or copy it before the model changes
    metrics: ClientMetrics


@dataclass
class LocalRound:
    net: Network  # holds the received weights when the round starts
    first_trainable: int
    config: TrainConfig
    seed: int  # round_seed(): the same after a restart, different across clients and rounds
    train_inputs: Inputs
    holdout: Inputs | None  # evaluate the received model on it (None: no evaluation asked, or no held-out slice)
    received: Mapping[str, torch.Tensor]  # the trainable tensors as received: the update is measured from them
    own_train: Callable[..., Any] | None = None  # --train-fn, already allowed and loaded by the caller
    own_evaluate: Callable[..., Any] | None = None  # --evaluate-fn, likewise
    private: PrivateTraining | None = None  # record-level DP-SGD (config.private): the client's own ledger and limit
    progress: Progress | None = None
    amp: bool = False
    metrics: ClientMetrics = field(default_factory=ClientMetrics)

    def run(self, personal_head: torch.nn.Module | None = None) -> tuple[LocalResult, torch.nn.Module | None]:
        """The whole round: evaluate what was received, fit the personal head (if asked), train, measure the update; or,
        in a statistics round, the statistics instead of training."""
        self.evaluate_received()
        if self.config.statistics:
            return self.statistics(), personal_head
        head = self.personalise(personal_head) if self.config.personal_epochs else None
        result, grads = self.train()
        return self.finish(result, self.update(grads)), head

    def evaluate_received(self) -> None:
        """Client-side evaluation of the global model as received, before local training changes it."""
        if self.holdout is None:
            return
        if self.own_evaluate is not None:
            self.metrics.merge(user_code.evaluate_with(self.own_evaluate, self.net, self.holdout, self.config, self.seed))
            self.metrics.eval_examples = len(self.holdout)
            return
        result = evaluate(self.net, self.holdout)
        self.metrics.eval_loss, self.metrics.eval_accuracy, self.metrics.eval_examples = result.loss, result.accuracy, result.examples

    def statistics(self) -> LocalResult:
        """A statistics round (server/statistics_rounds.py): the means of this shard's statistics on the received model,
        nothing trained. A closed-form head's (common/heads.py) on the backbone's features (cached where it is frozen),
        or BatchNorm's (common/batchnorm.py) for the layers the client trains."""
        start, inputs = time.perf_counter(), self.train_inputs
        if isinstance(inputs, ImageInputs) and inputs.transform.augment:  # statistics of the images as they are
            inputs = dataclasses.replace(inputs, transform=dataclasses.replace(inputs.transform, augment=False))
        if self.config.statistics == "batchnorm":
            specs = batchnorm.specs(self.net, self.first_trainable)
            stats = batchnorm.moments(self.net, inputs, self.first_trainable) if len(inputs) else {}
        else:
            linear = self._linear_head()
            specs = heads.specs(self.config.statistics, linear.in_features, linear.out_features)
            stats = self._head_statistics(inputs, linear) if len(inputs) else {}
            if stats and self.config.private:  # record-level DP: noised before they leave this object
                if self.private is None:
                    raise RuntimeError("private statistics need the client's privacy budget")
                stats, self.metrics.epsilon, self.metrics.dp_noise = self.private.release(self.config.statistics, stats, len(inputs),
                                                                                          self.config)
        if not len(inputs):  # an empty shard: zeros, claiming no examples (the coordinator refuses the claim, as in training)
            stats = {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in specs.items()}
        self.metrics.train_seconds = time.perf_counter() - start
        return LocalResult(len(inputs), UpdateKind.STATISTICS, UpdateSource.of(stats), self.metrics)

    def _linear_head(self) -> torch.nn.Linear:
        found = heads.linear_head(self.net.stages[-1][1])
        if found is None:
            raise DataUnavailable("the coordinator asks for a closed-form head, but this model's head is not a Linear layer")
        return found[0]

    def _head_statistics(self, inputs: Inputs, linear: torch.nn.Linear) -> dict[str, torch.Tensor]:
        features = features_at(self.net, inputs, len(self.net.stages) - 1)
        flat = features.features.reshape(len(features), -1)
        if flat.shape[1] != linear.in_features:
            raise DataUnavailable(f"the head takes {linear.in_features} features, this model's backbone gives {flat.shape[1]}")
        return heads.statistics(self.config.statistics, flat, features.labels, linear.out_features, self.config.feature_clip)

    def personalise(self, head: torch.nn.Module | None) -> torch.nn.Module:
        """Fit this client's own head on the received backbone's features (it starts as the global head and then carries
        over from round to round; it is never uploaded). Before local training, so it sees exactly the global backbone."""
        head_index = len(self.net.stages) - 1
        head = head if head is not None else copy.deepcopy(self.net.stages[head_index][1])
        fitted = fit_head(head, features_at(self.net, self.train_inputs, head_index), self.config, self.config.personal_epochs,
                          self.seed ^ PERSONAL_SEED)
        self.metrics.personal_train_loss, self.metrics.personal_seconds = fitted.loss, fitted.seconds
        if self.holdout is not None:
            with torch.no_grad():
                logits = head(features_at(self.net, self.holdout, head_index).features)
            self.metrics.personal_accuracy = float((logits.argmax(1) == self.holdout.labels).float().mean())
        return head

    def train(self) -> tuple[TrainResult, dict[str, torch.Tensor]]:
        """Local training by the task's recipe; (what it did, FedSGD's gradients or nothing)."""
        net, cfg, inputs = self.net, self.config, self.train_inputs
        if cfg.update_kind == UpdateKind.GRADIENT:
            grads, result = mean_gradient(net, self.first_trainable, inputs, cfg, self.seed, self.amp)
            return result, grads
        if cfg.private:
            if self.private is None:
                raise RuntimeError("a record-level DP-SGD task needs the client's privacy budget")
            result, self.metrics.epsilon, self.metrics.dp_noise = self.private.train(net, self.first_trainable, inputs, cfg,
                                                                                     self.progress)
            return result, {}
        if self.own_train is not None:
            reported, seconds = user_code.train_with(self.own_train, net, self.first_trainable, inputs, cfg, self.seed)
            loss, accuracy = reported.pop("train_loss", math.nan), reported.pop("train_accuracy", math.nan)
            self.metrics.merge(reported)
            return TrainResult(len(inputs), loss, accuracy, 0, seconds), {}
        parameters = self.parameters()
        reference = {n: t.to(inputs.labels.device) for n, t in self.received.items() if n in parameters} if cfg.proximal_mu > 0 else None
        return train_local(net, self.first_trainable, inputs, cfg, self.seed, reference, self.progress, self.amp), {}

    def update(self, grads: Mapping[str, torch.Tensor]) -> UpdateSource:
        """Gradients (FedSGD), else new minus received values of every tensor sent as trainable, read from the live model."""
        return update_source(self.net.module.state_dict(), self.received, grads, self.parameters())

    def finish(self, result: TrainResult, update: UpdateSource) -> LocalResult:
        m = self.metrics
        for name, value in (("train_loss", result.loss), ("train_accuracy", result.accuracy), ("train_seconds", result.seconds)):
            if math.isfinite(value):
                setattr(m, name, value)
        m.steps = result.steps
        # FedAvg weighs by the shard's size (the examples trained on, whatever the epochs); FedSGD by the examples its gradient saw
        kind = self.config.update_kind
        examples = result.num_examples if kind == UpdateKind.GRADIENT else min(result.num_examples, len(self.train_inputs))
        return LocalResult(examples, kind, update, m)

    def parameters(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.net.module.named_parameters())
