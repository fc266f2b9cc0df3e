"""Strategies by name. Adding a rule or a server optimizer is one module plus one line in a table below.

Kept free of torch imports (classes load on first use), so flags are checked against these names
before anything heavy is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedtl.server.secagg import SecAggSettings
    from fedtl.server.strategies.base import Strategy
    from fedtl.server.strategies.dp_settings import ClientDPSettings
    from fedtl.server.validated import ValidatedSettings


@dataclass(frozen=True)
class Registered:
    path: str  # "module:Class"
    default_lr: float = 1.0  # the server learning rate when --server-lr is not given (FedAvg)
    adaptive: bool = False  # takes --server-beta1/--server-beta2/--server-tau
    order_based: bool = False  # needs every update of a round at once (kept in memory or spilled to the run dir)


# How updates combine.
RULES: dict[str, Registered] = {
    "mean": Registered("fedtl.server.strategies.mean:Mean"),
    "median": Registered("fedtl.server.strategies.median:Median", order_based=True),
    "trimmed-mean": Registered("fedtl.server.strategies.trimmed_mean:TrimmedMean", order_based=True),
    "krum": Registered("fedtl.server.strategies.krum:Krum", order_based=True),
    "bulyan": Registered("fedtl.server.strategies.bulyan:Bulyan", order_based=True),
    "dnc": Registered("fedtl.server.strategies.dnc:DivideAndConquer", order_based=True),
    "geomedian": Registered("fedtl.server.strategies.geomedian:GeometricMedian", order_based=True),
    "fltrust": Registered("fedtl.server.strategies.fltrust:FLTrust", order_based=True),
}

# How the combined update moves the global model.
OPTIMIZERS: dict[str, Registered] = {
    "sgd": Registered("fedtl.server.strategies.sgd:ServerSgd", 1.0),
    "avgm": Registered("fedtl.server.strategies.avgm:ServerMomentum", 0.1),  # x 1/(1 - momentum): FedAvg's step once it builds up
    "adam": Registered("fedtl.server.strategies.adam:ServerAdam", 0.01, adaptive=True),
    "yogi": Registered("fedtl.server.strategies.yogi:ServerYogi", 0.01, adaptive=True),
    "adagrad": Registered("fedtl.server.strategies.adagrad:ServerAdagrad", 0.1, adaptive=True),
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
    max_update_norm: float = 0.0  # 0: no fixed norm bound
    norm_quantile: float = 0.0  # > 0: an adaptive bound, the running quantile of earlier rounds' update norms
    weighting: str = "capped"  # examples | uniform | capped
    weight_cap: float = 0.0  # capped: at most this many examples per client (0: its shard's size, when known)
    weighted_rule: bool = False  # robust rules weigh updates by their (capped) example counts
    rule_options: dict[str, Any] = field(default_factory=dict)  # the rule's own knobs (Rule.options: trim fraction, f, ...)
    secure: SecAggSettings | None = None  # set: secure aggregation (clients clip and bound their weights themselves)
    validated: ValidatedSettings | None = None  # set: two-server validated aggregation (server/validated)
    client_dp: ClientDPSettings | None = None  # set: client-level DP-FedAvg (clip, noise on the mean, a ledger)


def rule_entry(name: str) -> Registered:
    """A built-in rule by name, or the operator's own (`--aggregation package.module:Class`, a fedtl.api.Rule)."""
    if name in RULES:
        return RULES[name]
    from fedtl.common import plugin_refs

    if plugin_refs.is_plugin(name):
        return Registered(name, order_based=bool(getattr(plugin_refs.load(name, "--aggregation"), "order_based", False)))
    raise KeyError(name)


def rule_class(name: str) -> Any:
    """A built-in rule's class (imported on use)."""
    return _load(RULES[name])


def _load(entry: Registered) -> Any:
    module, _, name = entry.path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_strategy(s: StrategySettings, *, spill_dir: Path | None = None, caps: Callable[[str], float | None] | None = None,
                   root_update: Callable[[], Mapping] | None = None, privacy_ledger: Path | None = None) -> Strategy:
    """The configured rule and optimizer, wrapped by weighting (outermost: weights first) and norm bounds, or by
    secure aggregation.

    `spill_dir` takes order-based rules' updates once they outgrow memory; `caps` gives each client's weight cap;
    `root_update` is FLTrust's server update; `privacy_ledger` is where client-level DP keeps the federation's ledger."""
    from fedtl.server.strategies.base import Combined
    from fedtl.server.strategies.clipping import NormClip
    from fedtl.server.strategies.weighting import Weighting

    entry = rule_entry(s.rule)
    rule_class = _load(entry)
    offered = {"spill_dir": spill_dir, "root_update": root_update}  # what a rule may ask the coordinator for (Rule.resources)
    wanted = tuple(getattr(rule_class, "resources", ())) or (("spill_dir",) if entry.order_based else ())
    rule = rule_class.from_settings(s, **{k: offered[k] for k in wanted})
    optimizer = _load(OPTIMIZERS[s.optimizer]).from_settings(s)
    strategy: Strategy = Combined(rule, optimizer)
    if s.validated is not None:  # the coordinator sees shares only: the helper and it check every input, then sum the valid
        from fedtl.server.validated.strategy import ValidatedAggregation

        return ValidatedAggregation(strategy, s.validated)
    if s.secure is not None:  # the coordinator sees no update: clients clip, and bound their weights, before masking
        from fedtl.server.secagg.strategy import SecureAggregation

        secure = SecureAggregation(strategy, s.secure)
        if s.client_dp is None:
            return secure
        from fedtl.server.secagg.distributed_dp import DistributedDP  # the clients add the noise too

        return DistributedDP(secure, s.client_dp, privacy_ledger)
    if s.client_dp is not None:  # clips every update itself; weights: uniform, or the (capped) examples
        from fedtl.server.strategies.client_dp import ClientLevelDP

        strategy = ClientLevelDP(strategy, s.client_dp, privacy_ledger)
    elif s.max_update_norm or s.norm_quantile:
        strategy = NormClip(strategy, s.max_update_norm, s.norm_quantile)
    cap = (lambda _: s.weight_cap) if s.weight_cap else caps
    return Weighting(strategy, s.weighting, cap)
