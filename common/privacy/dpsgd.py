"""Record-level DP-SGD on a client: every example's gradient clipped, Gaussian noise on their sum, batches drawn by
Poisson sampling (each example in with probability q = batch / n), which is the event the accountant composes.

Only the trainable stages are differentiated. When they are Linear layers (a head on cached features: the
feature-cache path), per-example norms and the clipped sum come in closed form from each layer's inputs and output
gradients ("ghost clipping"), as cheap as plain SGD; otherwise every example's gradient comes from torch.func (vmap
of grad), in micro-batches. BatchNorm runs in eval mode (running statistics fixed and not updated:
batch statistics would mix examples, and updated running statistics would leak them). The sampling and the noise
draw from the operating system's randomness, not from the run's seed: the coordinator knows that seed, and noise
it could predict would protect nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedtl.common.config import TrainConfig
from fedtl.common.inputs import Inputs
from fedtl.common.models import Network, set_train_mode
from fedtl.common.privacy.accountant import POISSON, Steps
from fedtl.common.training import Progress, TrainResult

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
    params = {f"m.{n}": p for n, p in net.module.named_parameters() if p.requires_grad}
    assert params  # a model with nothing to train has nothing to protect either
    per_example = _VmapClipper(net, first, params)
    clipper = _LinearClipper.of(net, first, per_example) or per_example
    optimizer = torch.optim.SGD(params.values(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(inputs)
    rate, steps = steps_per_round(n, config)
    prefix = _prefix(net, inputs, first)
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(steps):
        chosen = torch.nonzero(torch.rand(n, generator=generator) < rate).flatten()
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for part in chosen.split(clipper.micro_batch):
            x, y = prefix(inputs.batch(part)), inputs.labels[part.to(device)]
            logits = clipper.add(x, y, config.dp_clip, total)
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
    return result, Steps(POISSON, noise, steps, rate=rate)


def _clip_factors(squared_norms: torch.Tensor, clip: float) -> torch.Tensor:
    return (clip / (squared_norms.sqrt() + 1e-12)).clamp(max=1.0)


class _VmapClipper:
    """Any trainable stages: every example's gradient from torch.func (vmap of grad), clipped, summed."""

    micro_batch = MICRO_BATCH

    def __init__(self, net: Network, first: int, params: Mapping[str, torch.Tensor]) -> None:
        module = _Trainable(net, first)
        buffers = {f"m.{n}": b for n, b in net.module.named_buffers()}
        self.params = params

        def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = functional_call(module, (p, buffers), (x.unsqueeze(0),))
            return F.cross_entropy(logits.float(), y.unsqueeze(0)), logits.detach()[0]

        self.per_example = vmap(grad(loss_of, has_aux=True), in_dims=(None, 0, 0), randomness="different")

    def add(self, x: torch.Tensor, y: torch.Tensor, clip: float, total: dict[str, torch.Tensor]) -> torch.Tensor:
        grads, logits = self.per_example({k: p.detach() for k, p in self.params.items()}, x, y)
        factor = _clip_factors(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()), clip)
        for k, g in grads.items():
            total[k] += torch.einsum("b,b...->...", factor, g)
        return logits


class _LinearClipper:
    """Trainable stages made only of Linear layers on 2-D inputs (a head on cached features): an example's gradient of
    W a + b is the outer product of the loss's gradient at the output (g) and the input (a), so its squared norm is
    |g|²(|a|² + 1) and the clipped sum is (f g)ᵀ a. No per-example gradient is materialised ("ghost clipping",
    Goodfellow 2015; Li et al. 2022): a private round costs about what a plain one does. Each layer must run once per
    forward pass (no weight sharing), which a classifier head does."""

    micro_batch = 4096

    def __init__(self, net: Network, first: int, layers: dict[str, nn.Linear], fallback: _VmapClipper) -> None:
        self.net, self.first, self.layers, self.fallback = net, first, layers, fallback

    @staticmethod
    def of(net: Network, first: int, fallback: _VmapClipper) -> _LinearClipper | None:
        layers = {}
        for name, module in net.module.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
                    return None
                layers[name] = module
        return _LinearClipper(net, first, layers, fallback) if layers else None

    def add(self, x: torch.Tensor, y: torch.Tensor, clip: float, total: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str):  # type: ignore[no-untyped-def]
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                inputs[name], outputs[name] = args[0].detach(), output
            return hook

        handles = [layer.register_forward_hook(keep(name)) for name, layer in self.layers.items()]
        try:
            logits = self.net.forward(x, self.first)
        finally:
            for handle in handles:
                handle.remove()
        if any(a.dim() != 2 for a in inputs.values()):  # a Linear over a sequence: per-token sums need the general path
            return self.fallback.add(x, y, clip, total)
        names = list(self.layers)
        at_outputs = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), [outputs[k] for k in names])
        squared = torch.stack([g.pow(2).sum(1) * (inputs[k].pow(2).sum(1) + bool(self._bias(k) is not None))
                               for k, g in zip(names, at_outputs)]).sum(0)
        factor = _clip_factors(squared, clip)
        for k, g in zip(names, at_outputs):
            weighted = g * factor[:, None]
            total[f"m.{k}.weight"] += weighted.t() @ inputs[k]
            if self._bias(k) is not None:
                total[f"m.{k}.bias"] += weighted.sum(0)
        return logits.detach()

    def _bias(self, name: str) -> torch.Tensor | None:
        bias = self.layers[name].bias
        return bias if bias is not None and bias.requires_grad else None


def _prefix(net: Network, inputs: Inputs, first: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        if inputs.start_stage < first:
            with torch.no_grad():
                return net.forward(x, inputs.start_stage, first)
        return x

    return run
