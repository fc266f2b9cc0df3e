"""Local SGD of many clients' linear heads at once, on shared cached features: one batched matrix product per step
for every client, instead of a Python loop of tiny ones.

Exact by construction: each client draws its batches (the shuffle generator) and its dropout masks (the global RNG
after `torch.manual_seed(seed)`) from exactly the streams `common/training.py` uses for the same seed, and takes
the same SGD steps (weight decay added to the gradient, momentum buffers from zero). Only summation order differs
(batched products), so a client's head matches a lone `train_local` to float rounding (tests/test_simulate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedtl.common.batches import batches
from fedtl.common.config import TrainConfig

CHUNK = 256  # clients per batched step: bounds the padded batch tensor (CHUNK x batch x features floats)


@dataclass(frozen=True)
class HeadJob:
    indices: torch.Tensor  # the client's training examples, as rows of the shared feature matrix
    seed: int


@dataclass(frozen=True)
class HeadResult:
    weight: torch.Tensor
    bias: torch.Tensor
    loss: float
    accuracy: float
    seen: int
    steps: int
    seconds: float


def train_heads(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, jobs: list[HeadJob],
                cfg: TrainConfig, dropout: float) -> list[HeadResult]:
    """Every job's head after local SGD from (weight, bias), as `train_local` would leave it."""
    out: list[HeadResult] = []
    for start in range(0, len(jobs), CHUNK):
        out.extend(_train_chunk(weight, bias, features, labels, jobs[start : start + CHUNK], cfg, dropout))
    return out


def _schedule(job: HeadJob, cfg: TrainConfig) -> list[torch.Tensor]:
    """The client's batches (rows of the feature matrix), in the order `_passes` draws them."""
    generator = torch.Generator().manual_seed(job.seed)
    steps: list[torch.Tensor] = []
    for _ in range(cfg.local_epochs):
        for idx in batches(len(job.indices), cfg.batch_size, shuffle=True, generator=generator):
            steps.append(job.indices[idx])
            if cfg.max_steps and len(steps) >= cfg.max_steps:
                return steps
    return steps


def _train_chunk(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, jobs: list[HeadJob],
                 cfg: TrainConfig, dropout: float) -> list[HeadResult]:
    start = time.perf_counter()
    count, width, classes, batch = len(jobs), features.shape[1], weight.shape[0], cfg.batch_size
    schedules = [_schedule(job, cfg) for job in jobs]
    masks = [torch.Generator().manual_seed(job.seed) for job in jobs] if dropout > 0 else []
    w = weight.detach().to(torch.float32).expand(count, classes, width).clone()
    b = bias.detach().to(torch.float32).expand(count, classes).clone()
    w_momentum, b_momentum = torch.zeros_like(w), torch.zeros_like(b)
    loss_sum, correct, seen = torch.zeros(count, dtype=torch.float64), torch.zeros(count, dtype=torch.int64), torch.zeros(count, dtype=torch.int64)
    for step in range(max((len(s) for s in schedules), default=0)):
        active = [c for c in range(count) if step < len(schedules[c])]
        rows = torch.tensor(active)
        x = torch.zeros(len(active), batch, width)
        y = torch.zeros(len(active), batch, dtype=torch.int64)
        real = torch.zeros(len(active), batch)
        for slot, c in enumerate(active):
            idx = schedules[c][step]
            n = len(idx)
            x[slot, :n] = features[idx]
            if dropout > 0:  # what F.dropout does in training mode: bernoulli(1 - p) / (1 - p), from the client's own stream
                x[slot, :n] *= torch.empty(n, width).bernoulli_(1 - dropout, generator=masks[c]).div_(1 - dropout)
            y[slot, :n] = labels[idx]
            real[slot, :n] = 1.0
        sizes = real.sum(1)
        ws, bs = w[rows], b[rows]
        logits = torch.baddbmm(bs.unsqueeze(1), x, ws.transpose(1, 2))
        log_p = torch.log_softmax(logits, dim=2)
        picked = log_p.gather(2, y.unsqueeze(2)).squeeze(2)
        loss = -(picked * real).sum(1) / sizes  # each client's mean cross-entropy over its real examples
        grad = log_p.exp()
        grad.scatter_add_(2, y.unsqueeze(2), -torch.ones(len(active), batch, 1))
        grad *= (real / sizes.unsqueeze(1)).unsqueeze(2)
        gw = torch.bmm(grad.transpose(1, 2), x)
        gb = grad.sum(1)
        if cfg.weight_decay:
            gw += cfg.weight_decay * ws
            gb += cfg.weight_decay * bs
        mw = w_momentum[rows] * cfg.momentum + gw
        mb = b_momentum[rows] * cfg.momentum + gb
        w_momentum[rows], b_momentum[rows] = mw, mb
        w[rows], b[rows] = ws - cfg.lr * mw, bs - cfg.lr * mb
        loss_sum[rows] += (loss * sizes).double()
        correct[rows] += ((logits.argmax(2) == y) & (real > 0)).sum(1)
        seen[rows] += sizes.long()
    seconds = (time.perf_counter() - start) / max(count, 1)
    return [HeadResult(w[c].to(weight.dtype), b[c].to(bias.dtype), float(loss_sum[c] / max(int(seen[c]), 1)),
                       float(correct[c]) / max(int(seen[c]), 1), int(seen[c]), len(schedules[c]), seconds) for c in range(count)]
