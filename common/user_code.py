"""The operator's own training and evaluation functions on clients (--train-fn, --evaluate-fn) and metric aggregation
on the coordinator (--metric-aggregation): what they are given, and how what they return reaches the round.

A training function gets the whole model (one module: the network's stages in order, the frozen ones in eval mode
and without gradients, as the built-in loop has them) and the client's examples; the update sent is still what
changed in the trained part, so transfer-learning traffic (only the trained part travels) is unchanged.

    def train(model: torch.nn.Module, data: LocalData, config: TrainConfig) -> dict[str, float]:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        for _ in range(config.local_epochs):
            for x, y in data.batches():
                ...
        return {"train_loss": last_loss}
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedtl.common.batches import batches
from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.inputs import Inputs
from fedtl.common.models import Network, eval_mode, set_train_mode

logger = logging.getLogger(__name__)

MAX_USER_METRICS = 16  # what one function may report (the wire takes 64 metrics an update, ours included)
MAX_NAME = 48


@dataclass
class LocalData:
    """A client's examples as your function sees them: (inputs, labels) batches on the client's device, of the round's
    batch size, shuffled from the round's seed (a restarted client draws the same batches)."""

    inputs: Inputs
    batch_size: int
    seed: int
    _passes: int = field(default=0, repr=False)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def labels(self) -> torch.Tensor:
        return self.inputs.labels

    def batches(self, shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the examples; each call draws a new order (the first from the round's seed)."""
        generator = torch.Generator().manual_seed(self.seed + self._passes)
        self._passes += 1
        device = self.inputs.labels.device
        for idx in batches(len(self.inputs), self.batch_size, shuffle, generator):
            yield self.inputs.batch(idx, generator), self.inputs.labels[idx.to(device)]


class WholeModel(torch.nn.Module):
    """The network as one module: its stages in order (`net.module` alone may not forward the way the stages do).
    `train()` puts only the trained stages in training mode: frozen BatchNorm statistics never move."""

    def __init__(self, net: Network, first_trainable: int) -> None:
        super().__init__()
        self.network = net.module
        self._net, self._first = net, first_trainable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.forward(x)

    def train(self, mode: bool = True) -> WholeModel:
        for index, (_, stage) in enumerate(self._net.stages):
            stage.train(mode and index >= self._first)
        self.training = mode
        return self


def checked_metrics(values: object, what: str) -> dict[str, float]:
    """What a function returned, as at most MAX_USER_METRICS finite numbers by short names; anything else is said clearly."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} returned {type(values).__name__}; return a dict of metric name -> number (or None)")
    out: dict[str, float] = {}
    for key, value in list(values.items())[:MAX_USER_METRICS]:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} returned {key!r}: {type(value).__name__}; metrics must be numbers") from None
        if not math.isfinite(number):
            logger.warning("%s returned %s = %s: not a finite number, left out of the round's metrics", what, key, number)
            continue
        out[str(key)[:MAX_NAME]] = number
    return out


def train_with(function: Callable[..., Any], net: Network, first_trainable: int, inputs: Inputs, cfg: TrainConfig,
               seed: int) -> tuple[dict[str, float], float]:
    """Run the operator's training function; (its metrics, seconds)."""
    start = time.perf_counter()
    set_train_mode(net, first_trainable)
    torch.manual_seed(seed)  # dropout and any other draw from torch's global generator, as in the built-in loop
    try:
        returned = function(WholeModel(net, first_trainable), LocalData(inputs, cfg.batch_size, seed), cfg)
        metrics = checked_metrics(returned, f"--train-fn {cfg.train_fn}")
    finally:
        set_train_mode(net, len(net.stages))
    return metrics, time.perf_counter() - start


def evaluate_with(function: Callable[..., Any], net: Network, inputs: Inputs, cfg: TrainConfig, seed: int) -> dict[str, float]:
    with torch.no_grad(), eval_mode(net):
        returned = function(WholeModel(net, len(net.stages)).eval(), LocalData(inputs, cfg.batch_size, seed))
    return checked_metrics(returned, f"--evaluate-fn {cfg.evaluate_fn}")


def aggregate_metrics(function: Callable[..., Any], reports: list[tuple[int, dict[str, float]]], ref: str) -> dict[str, float]:
    """The coordinator's --metric-aggregation over (examples, metrics) of every answering client."""
    return checked_metrics(function(reports), f"--metric-aggregation {ref}")
