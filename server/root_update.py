"""FLTrust's server update: the clients' own recipe, run by the coordinator on its small clean root set, from the
global model of the round (a copy: the global model itself never changes here)."""

from __future__ import annotations

import copy

import torch

from fedtl.common import features
from fedtl.common.config import TrainConfig, UpdateKind
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.network import Network
from fedtl.common.training import mean_gradient, train_local


class RootTrainer:
    def __init__(self, net: Network, trainable: list[str], first_trainable: int, root: ImageInputs, root_digest: str,
                 config: TrainConfig) -> None:
        self.net, self.trainable, self.first_trainable = net, trainable, first_trainable
        self.root, self.root_digest, self.config = root, root_digest, config
        self.decision = features.decide(config.feature_cache, first_trainable, config.augment)
        self.cache = features.FeatureCache()
        self.rounds = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        """The update a client would send from this root set: new minus received weights (or the mean gradient)."""
        self.rounds += 1
        inputs: Inputs = self.root
        if self.decision.use:  # the frozen prefix never changes, so its features are computed once
            inputs, _ = self.cache.get("root", self.net, self.root, self.root_digest, self.first_trainable)
        work = copy.deepcopy(self.net)
        before = {n: t.detach().clone() for n, t in self.net.module.state_dict().items() if n in set(self.trainable)}
        seed = 0x7057 + self.rounds
        if self.config.update_kind == UpdateKind.GRADIENT:
            grads, _ = mean_gradient(work, self.first_trainable, inputs, self.config, seed)
            after = work.module.state_dict()
            return {n: grads[n].detach().double() if n in grads else (after[n] - before[n]).double() for n in self.trainable}
        train_local(work, self.first_trainable, inputs, self.config, seed)
        after = work.module.state_dict()
        return {n: (after[n].detach() - before[n]).double() for n in self.trainable}
