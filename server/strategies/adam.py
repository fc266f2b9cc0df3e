"""FedAdam: v = beta2 * v + (1 - beta2) * delta^2."""

from __future__ import annotations

import torch

from fedtl.server.strategies.adaptive import AdaptiveOptimizer


class ServerAdam(AdaptiveOptimizer):
    name = "adam"

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        v.mul_(self.beta2).addcmul_(delta, delta, value=1 - self.beta2)
