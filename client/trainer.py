"""Local fine-tuning and FedSGD gradients on a client's shard. No network; returns metrics, never prints."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from common.batches import batches
from common.config import TrainConfig
from common.inputs import Inputs
from common.models import Network, set_train_mode

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


def _logits(net: Network, inputs: Inputs, first_trainable: int, x: torch.Tensor) -> torch.Tensor:
    if inputs.start_stage < first_trainable:
        with torch.no_grad():  # the frozen prefix: no graph, eval mode (see set_train_mode)
            x = net.forward(x, inputs.start_stage, first_trainable)
    return net.forward(x, first_trainable)


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
    Shuffling, augmentation and dropout draw from `seed` only, so the same seed gives the same
    result whether inputs are images or cached features.
    """
    start = time.perf_counter()
    set_train_mode(net, first_trainable)
    named = [(n, p) for n, p in net.module.named_parameters() if p.requires_grad]
    if optimizer is None:  # a federated round starts a fresh optimizer; a centralised baseline passes its own
        optimizer = torch.optim.SGD([p for _, p in named], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    device = inputs.labels.device
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(inputs)
    per_epoch = (n + config.batch_size - 1) // config.batch_size
    steps, loss_sum, correct, seen = 0, 0.0, 0, 0
    for epoch in range(epochs or config.local_epochs):
        for index, idx in enumerate(batches(n, config.batch_size, shuffle=True, generator=generator)):
            x = inputs.batch(idx, generator)
            y = inputs.labels[idx.to(device)]
            with _autocast(device, amp):
                logits = _logits(net, inputs, first_trainable, x)
                loss = F.cross_entropy(logits.float(), y)
            objective = loss
            if config.proximal_mu > 0 and reference is not None:
                objective = loss + 0.5 * config.proximal_mu * sum(((p - reference[name]) ** 2).sum() for name, p in named)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            if progress:
                progress(epoch, index + 1, per_epoch, loss_sum / seen)
            if config.max_steps and steps >= config.max_steps:
                break
        if config.max_steps and steps >= config.max_steps:
            break
    set_train_mode(net, len(net.stages))  # back to eval everywhere
    return TrainResult(seen, loss_sum / max(seen, 1), correct / max(seen, 1), steps, time.perf_counter() - start)


def mean_gradient(
    net: Network, first_trainable: int, inputs: Inputs, config: TrainConfig, seed: int, amp: bool = False
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """FedSGD: the gradient of the mean loss over the shard (or its first max_steps batches) at the current weights."""
    start = time.perf_counter()
    set_train_mode(net, first_trainable)
    named = [(n, p) for n, p in net.module.named_parameters() if p.requires_grad]
    for _, p in named:
        p.grad = None
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = inputs.labels.device
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    for idx in batches(len(inputs), config.batch_size, shuffle=True, generator=generator):
        x = inputs.batch(idx, generator)
        y = inputs.labels[idx.to(device)]
        with _autocast(device, amp):
            logits = _logits(net, inputs, first_trainable, x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
        loss.backward()  # gradients of the summed loss accumulate across batches
        steps += 1
        loss_sum += float(loss.detach())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if config.max_steps and steps >= config.max_steps:
            break
    grads = {name: (p.grad / seen if p.grad is not None else torch.zeros_like(p)).detach() for name, p in named}
    set_train_mode(net, len(net.stages))
    return grads, TrainResult(seen, loss_sum / max(seen, 1), correct / max(seen, 1), steps, time.perf_counter() - start)


def fit_head(head: torch.nn.Module, inputs: Inputs, config: TrainConfig, epochs: int, seed: int) -> TrainResult:
    """Fine-tune a stand-alone head on features (a personal head: it never leaves the client)."""
    start = time.perf_counter()
    head.train()
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = inputs.labels.device
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        for idx in batches(len(inputs), config.batch_size, shuffle=True, generator=generator):
            logits = head(inputs.batch(idx, generator))
            y = inputs.labels[idx.to(device)]
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
    head.eval()
    return TrainResult(seen, loss_sum / max(seen, 1), correct / max(seen, 1), steps, time.perf_counter() - start)
