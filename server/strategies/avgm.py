"""FedAvgM (Hsu et al. 2019): server momentum on the pseudo-gradient, v = momentum * v + delta."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.base import ServerOptimizer


class ServerMomentum(ServerOptimizer):
    name = "avgm"
    default_lr = 1.0

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = momentum
        self.velocity: dict[str, torch.Tensor] = {}

    @classmethod
    def from_settings(cls, s: StrategySettings) -> ServerMomentum:
        return cls(s.lr, s.momentum)

    def direction(self, name: str, pseudo_gradient: torch.Tensor) -> torch.Tensor:
        velocity = self.velocity.setdefault(name, torch.zeros_like(pseudo_gradient))
        velocity.mul_(self.momentum).add_(pseudo_gradient)
        return velocity

    def buffers(self) -> dict[str, torch.Tensor]:
        return {f"v.{k}": v for k, v in self.velocity.items()}

    def load_buffers(self, state: Mapping[str, torch.Tensor]) -> None:
        self.velocity = {k[2:]: v.clone().double() for k, v in state.items() if k.startswith("v.")}

    def describe(self) -> str:
        return f"avgm (lr {self.lr:g}, momentum {self.momentum:g})"
