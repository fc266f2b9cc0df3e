"""FedAdagrad: v = v + delta^2 (beta2 unused), so every parameter's step shrinks with its history."""

from __future__ import annotations

import torch

from fedtl.server.strategies.adaptive import AdaptiveOptimizer


class ServerAdagrad(AdaptiveOptimizer):
    name = "adagrad"
    default_lr = 0.1

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        v.addcmul_(delta, delta)
