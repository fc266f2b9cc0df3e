"""Plain server SGD: with learning rate 1 on weight deltas this is FedAvg; on gradients, FedSGD."""

from __future__ import annotations

import torch

from fedtl.server.strategies.base import ServerOptimizer


class ServerSgd(ServerOptimizer):
    name = "sgd"
    default_lr = 1.0

    def direction(self, name: str, pseudo_gradient: torch.Tensor) -> torch.Tensor:
        return pseudo_gradient
