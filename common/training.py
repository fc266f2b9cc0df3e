"""Local fine-tuning and FedSGD gradients on a client's shard. No network; returns metrics, never prints.

One loop (`_passes`) draws every batch for all three uses: local training (FedAvg, FedProx), the
mean gradient of FedSGD, and a personal head on features. Shuffling, augmentation and dropout draw
from the given seed only, so the same seed gives the same result on images or cached features.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedtl.common.batches import batches
from fedtl.common.config import TrainConfig
from fedtl.common.inputs import Inputs
from fedtl.common.models import Network, set_train_mode

# (epoch, batch, batches per epoch, running mean loss) -> None
Progress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    loss: float
    accuracy: float
    steps: int
    seconds: float


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _logits(net: Network, inputs: Inputs, first_trainable: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if inputs.start_stage < first_trainable:
            with torch.no_grad():  # the frozen prefix: no graph, eval mode (see set_train_mode)
                x = net.forward(x, inputs.start_stage, first_trainable)
        return net.forward(x, first_trainable)

    return forward


def _passes(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    inputs: Inputs,
    batch_size: int,
    epochs: int,
    max_steps: int,
    seed: int,
    on_loss: Callable[[torch.Tensor], None],
    *,
    summed: bool = False,
    progress: Progress | None = None,
    amp: bool = False,
) -> TrainResult:
    """Shuffled batches for `epochs` (at most `max_steps` batches, 0: no cap); `on_loss` gets each batch's
    cross-entropy (mean, or `summed` over the batch) and does the backward pass and any step."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = inputs.labels.device
    n = len(inputs)
    per_epoch = (n + batch_size - 1) // batch_size
    steps, loss_sum, correct, seen = 0, 0.0, 0, 0
    for epoch in range(epochs):
        for index, idx in enumerate(batches(n, batch_size, shuffle=True, generator=generator)):
            x = inputs.batch(idx, generator)
            y = inputs.labels[idx.to(device)]
            with _autocast(device, amp):
                logits = logits_of(x)
                loss = F.cross_entropy(logits.float(), y, reduction="sum" if summed else "mean")
            on_loss(loss)
            steps += 1
            loss_sum += float(loss.detach()) * (1 if summed else len(idx))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            if progress:
                progress(epoch, index + 1, per_epoch, loss_sum / seen)
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    return TrainResult(seen, loss_sum / max(seen, 1), correct / max(seen, 1), steps, time.perf_counter() - start)


def train_local(
    net: Network,
    first_trainable: int,
    inputs: Inputs,
    config: TrainConfig,
    seed: int,
    reference: Mapping[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
    amp: bool = False,
    epochs: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """Fine-tune the trainable stages with SGD (fresh optimizer), optionally with the FedProx term.

    `reference` holds the received global values of the trainable parameters (FedProx anchor).
    """
    set_train_mode(net, first_trainable)
    named = [(n, p) for n, p in net.module.named_parameters() if p.requires_grad]
    if optimizer is None:  # a federated round starts a fresh optimizer; a centralised baseline passes its own
        optimizer = torch.optim.SGD([p for _, p in named], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    prox = config.proximal_mu if reference is not None else 0.0

    def step(loss: torch.Tensor) -> None:
        objective = loss
        if prox > 0:
            assert reference is not None
            objective = loss + 0.5 * prox * sum(((p - reference[name]) ** 2).sum() for name, p in named)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()

    try:
        return _passes(_logits(net, inputs, first_trainable), inputs, config.batch_size, epochs or config.local_epochs,
                       config.max_steps, seed, step, progress=progress, amp=amp)
    finally:
        set_train_mode(net, len(net.stages))  # back to eval everywhere


def mean_gradient(
    net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig, seed: int, amp: bool = False
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """FedSGD: the gradient of the mean loss over the shard (or its first max_steps batches) at the current weights."""
    set_train_mode(net, first_trainable)
    named = [(n, p) for n, p in net.module.named_parameters() if p.requires_grad]
    for _, p in named:
        p.grad = None
    try:  # gradients of the summed loss accumulate across batches
        result = _passes(_logits(net, inputs, first_trainable), inputs, config.batch_size, 1, config.max_steps, seed,
                         lambda loss: loss.backward(), summed=True, amp=amp)
    finally:
        set_train_mode(net, len(net.stages))
    grads = {name: (p.grad / result.num_examples if p.grad is not None else torch.zeros_like(p)).detach() for name, p in named}
    return grads, result


def fit_head(head: torch.nn.Module, inputs: Inputs, config: TrainConfig, epochs: int, seed: int) -> TrainResult:
    """Fine-tune a stand-alone head on features (a personal head: it never leaves the client)."""
    head.train()
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        return _passes(head, inputs, config.batch_size, epochs, 0, seed, step)
    finally:
        head.eval()
