"""Record-level DP-SGD on a client: every example's gradient clipped, Gaussian noise on their sum, batches drawn by
Poisson sampling (each example in with probability q = batch / n), which is the event the accountant composes.

Per-example gradients come from torch.func (vmap of grad) over the trainable stages only: on the feature-cache path
that is the head on cached features, cheap. BatchNorm runs in eval mode (running statistics fixed and not updated:
batch statistics would mix examples, and updated running statistics would leak them). The sampling and the noise
draw from the operating system's randomness, not from the run's seed: the coordinator knows that seed, and noise
it could predict would protect nothing.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from common.config import TrainConfig
from common.inputs import Inputs
from common.models import Network, set_train_mode
from common.privacy.accountant import POISSON, Steps
from common.training import Progress, TrainResult

MICRO_BATCH = 64  # examples per vmap call: bounds the per-example gradients held at once


def steps_per_round(examples: int, config: TrainConfig) -> tuple[float, int]:
    """(sampling rate q, steps) of one round: each epoch takes n / batch Poisson-sampled steps."""
    rate = min(1.0, config.batch_size / max(1, examples))
    steps = config.local_epochs * max(1, round(1 / rate))
    return rate, steps if not config.max_steps else min(steps, config.max_steps)


def private_train(net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig, noise: float,
                  progress: Progress | None = None) -> tuple[TrainResult, Steps]:
    """DP-SGD over the trainable stages; returns the result and the steps to add to the client's ledger."""
    start = time.perf_counter()
    set_train_mode(net, first_trainable)
    for module in net.module.modules():  # BatchNorm: eval mode (see the module docstring)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        return _run(net, first_trainable, inputs, config, noise, progress, start)
    finally:
        set_train_mode(net, len(net.stages))


class _Trainable(nn.Module):
    """The trainable stages as one module; its parameters are named as in the whole model (prefixed `m.`)."""

    def __init__(self, net: Network, first: int) -> None:
        super().__init__()
        self.m, self._net, self._first = net.module, net, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.forward(x, self._first)


def _run(net: Network, first: int, inputs: Inputs, config: TrainConfig, noise: float, progress: Progress | None,
         start: float) -> tuple[TrainResult, Steps]:
    device = inputs.labels.device
    generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(os.urandom(8), "little"))
    noise_generator = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))
    module = _Trainable(net, first)
    names = [n for n, p in net.module.named_parameters() if p.requires_grad]
    params = {f"m.{n}": p for n, p in net.module.named_parameters() if p.requires_grad}
    buffers = {f"m.{n}": b for n, b in net.module.named_buffers()}
    optimizer = torch.optim.SGD(params.values(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(inputs)
    rate, steps = steps_per_round(n, config)
    prefix = _prefix(net, inputs, first)

    def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(module, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0)), logits.detach()[0]

    per_example = vmap(grad(loss_of, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(steps):
        chosen = torch.nonzero(torch.rand(n, generator=generator) < rate).flatten()
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        detached = {k: p.detach() for k, p in params.items()}
        for part in chosen.split(MICRO_BATCH):
            x, y = prefix(inputs.batch(part)), inputs.labels[part.to(device)]
            grads, logits = per_example(detached, x, y)
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
            factor = (config.dp_clip / (norms + 1e-12)).clamp(max=1.0)
            for k, g in grads.items():
                total[k] += torch.einsum("b,b...->...", factor, g)
            with torch.no_grad():
                loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
            seen += len(part)
        for k, p in params.items():  # noise on the clipped sum, then the mean over the expected batch
            total[k] += torch.normal(0.0, noise * config.dp_clip, size=p.shape, generator=noise_generator, device=p.device)
            p.grad = (total[k] / (rate * n)).to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress:
            progress(0, step + 1, steps, loss_sum / max(seen, 1))
    result = TrainResult(seen, loss_sum / max(seen, 1), correct / max(seen, 1), steps, time.perf_counter() - start)
    assert names  # a model with nothing to train has nothing to protect either
    return result, Steps(POISSON, noise, steps, rate=rate)


def _prefix(net: Network, inputs: Inputs, first: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        if inputs.start_stage < first:
            with torch.no_grad():
                return net.forward(x, inputs.start_stage, first)
        return x

    return run
