"""Adaptive server optimizers (FedOpt: Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

m = beta1 * m + (1 - beta1) * delta;  v by the subclass' second-moment rule;  change = lr * m / (sqrt(v) + tau),
with m and v starting at zero (as in Flower). Optional bias correction scales lr by
sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) at server step t (1-based), which is what Flower's FedAdam
does (its `server_round + 1`); the paper has none. Only parameters are stepped (see ServerOptimizer).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import torch

from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.base import ServerOptimizer


class AdaptiveOptimizer(ServerOptimizer):
    default_lr = 0.01

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, bias_correction: bool = False) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.tau, self.bias_correction = beta1, beta2, tau, bias_correction
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    @classmethod
    def from_settings(cls, s: StrategySettings) -> AdaptiveOptimizer:
        return cls(s.lr, s.beta1, s.beta2, s.tau, s.bias_correction)

    @abc.abstractmethod
    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> None:
        """Update v in place from this step's pseudo-gradient."""

    def direction(self, name: str, pseudo_gradient: torch.Tensor) -> torch.Tensor:
        m = self.m.setdefault(name, torch.zeros_like(pseudo_gradient))
        v = self.v.setdefault(name, torch.zeros_like(pseudo_gradient))
        m.mul_(self.beta1).add_(pseudo_gradient, alpha=1 - self.beta1)
        self.second_moment(v, pseudo_gradient)
        return m / (v.sqrt() + self.tau)

    def step_size(self) -> float:
        if not self.bias_correction:
            return self.lr
        t = self.steps + 1
        return self.lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}

    def load_buffers(self, state: Mapping[str, torch.Tensor]) -> None:
        self.m = {k[2:]: v.clone().double() for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: v.clone().double() for k, v in state.items() if k.startswith("v.")}

    def describe(self) -> str:
        corrected = ", bias-corrected" if self.bias_correction else ""
        return f"{self.name} (lr {self.lr:g}, beta1 {self.beta1:g}, beta2 {self.beta2:g}, tau {self.tau:g}{corrected})"
