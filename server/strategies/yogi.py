"""FedYogi: v = v - (1 - beta2) * delta^2 * sign(v - delta^2), so v grows no faster than Adam's and shrinks slower."""

from __future__ import annotations

import torch

from fedtl.server.strategies.adaptive import AdaptiveOptimizer


class ServerYogi(AdaptiveOptimizer):
    name = "yogi"

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        square = delta * delta
        v.sub_(square * torch.sign(v - square), alpha=1 - self.beta2)
