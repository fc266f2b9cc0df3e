"""Per-round client configuration (`--round-config package.module:function`): a learning-rate schedule, more local
epochs late in the run, ... The function gets the round number and the run's recipe and returns the settings to
change for that round. It is called for every round when the flags are read, so a bad schedule fails at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.plugin_refs import load

# What a schedule may change: the local optimisation, never the algorithm, the seed or the privacy settings.
ADJUSTABLE = ("lr", "local_epochs", "batch_size", "momentum", "weight_decay", "max_steps", "proximal_mu")


def schedule(ref: str, base: TrainConfig, rounds: int) -> dict[int, TrainConfig]:
    """The recipe of every round 1..rounds under the function `ref` (rounds it leaves alone are not listed)."""
    function = load(ref, "--round-config")
    out: dict[int, TrainConfig] = {}
    for number in range(1, rounds + 1):
        changes = function(number, base)
        if not changes:
            continue
        if not isinstance(changes, Mapping):
            raise ConfigError(f"--round-config {ref}: round {number} returned {type(changes).__name__}; return a dict such as "
                              "{'lr': 0.01}")
        unknown = sorted(set(changes) - set(ADJUSTABLE))
        if unknown:
            raise ConfigError(f"--round-config {ref}: round {number} changes {unknown}; a schedule may change {', '.join(ADJUSTABLE)}")
        try:
            out[number] = replace(base, **{k: type(getattr(base, k))(v) for k, v in changes.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--round-config {ref}: round {number}: {exc}") from None
    return out
