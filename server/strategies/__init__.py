"""Strategies by name. Adding a rule or a server optimizer is one module plus one line in a table below.

Kept free of torch imports (classes load on first use), so flags are checked against these names
before anything heavy is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.strategies.base import Strategy


@dataclass(frozen=True)
class Registered:
    path: str  # "module:Class"
    default_lr: float = 1.0  # the server learning rate when --server-lr is not given (FedAvg)
    adaptive: bool = False  # takes --server-beta1/--server-beta2/--server-tau


# How updates combine.
RULES: dict[str, Registered] = {
    "mean": Registered("server.strategies.mean:Mean"),
}

# How the combined update moves the global model.
OPTIMIZERS: dict[str, Registered] = {
    "sgd": Registered("server.strategies.sgd:ServerSgd", 1.0),
    "avgm": Registered("server.strategies.avgm:ServerMomentum", 0.1),  # x 1/(1 - momentum): FedAvg's step once it builds up
    "adam": Registered("server.strategies.adam:ServerAdam", 0.01, adaptive=True),
    "yogi": Registered("server.strategies.yogi:ServerYogi", 0.01, adaptive=True),
    "adagrad": Registered("server.strategies.adagrad:ServerAdagrad", 0.1, adaptive=True),
}


@dataclass(frozen=True)
class StrategySettings:
    """Everything a strategy is built from; checked by server/config.py when the flags are parsed."""

    rule: str = "mean"
    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = False
    max_update_norm: float = 0.0  # 0: no norm bound
    weight_cap: float = 0.0  # 0: weights are the claimed example counts


def _load(entry: Registered) -> type:
    module, _, name = entry.path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_strategy(s: StrategySettings) -> "Strategy":
    """The configured rule and optimizer, wrapped by the bounds that are on (weights capped, then clipped)."""
    from server.strategies.base import Combined
    from server.strategies.clipping import NormClip
    from server.strategies.weight_cap import WeightCap

    rule = _load(RULES[s.rule])()
    optimizer = _load(OPTIMIZERS[s.optimizer]).from_settings(s)
    strategy: Strategy = Combined(rule, optimizer)
    if s.weight_cap:
        strategy = WeightCap(strategy, s.weight_cap)
    if s.max_update_norm:
        strategy = NormClip(strategy, s.max_update_norm)
    return strategy
