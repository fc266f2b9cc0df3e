"""Closed-form heads from sufficient statistics of frozen features: the ridge head (Fed3R) and the class-mean head
(FedNCM). Pure torch, no I/O.

Each client sends the *means* of its statistics over its examples: Φ̃ᵀΦ̃/n (the upper triangle) and Φ̃ᵀY/n, where Φ̃
is its features with a column of ones appended and Y its one-hot labels. The coordinator's example-weighted mean of
those (weights n) is the same mean over the union of every client's data, whatever the split: the head solved from it
equals the centralised ridge head on the pooled data. Everything is float64 end to end (entries are sums of squares).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

GRAM = "head_statistics.gram"  # upper triangle (row-major, diagonal included) of Φ̃ᵀΦ̃ / n: (d+1)(d+2)/2 values
CROSS = "head_statistics.cross"  # Φ̃ᵀY / n: (d+1) x classes; its last row is the class frequencies


def linear_head(head: torch.nn.Module) -> tuple[torch.nn.Linear, float] | None:
    """(the Linear layer, dropout before it) when the head is Linear or Dropout -> Linear; None otherwise."""
    if isinstance(head, torch.nn.Linear):
        return head, 0.0
    parts = list(head.children()) if isinstance(head, torch.nn.Sequential) else []
    if len(parts) == 2 and isinstance(parts[0], torch.nn.Dropout) and isinstance(parts[1], torch.nn.Linear):
        return parts[1], float(parts[0].p)
    return None


def specs(kind: str, dim: int, classes: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors a statistics update of this kind carries, for features of `dim` values and `classes` classes."""
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {CROSS: (torch.float64, (dim + 1, classes))}
    if kind == "ridge":
        out[GRAM] = (torch.float64, ((dim + 1) * (dim + 2) // 2,))
    return out


def statistics(kind: str, features: torch.Tensor, labels: torch.Tensor, classes: int, clip: float = 0.0) -> dict[str, torch.Tensor]:
    """This client's mean statistics (float64) over its examples; `clip` > 0: each example's features first clipped to
    that L2 norm (what bounds them for secure aggregation: `bound`)."""
    n = len(labels)
    if n == 0:
        raise ValueError("no examples to compute head statistics from")
    flat = features.reshape(n, -1).cpu().to(torch.float64)
    if clip > 0:
        flat = clip_features(flat, clip)
    phi = torch.cat([flat, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    onehot = torch.zeros(n, classes, dtype=torch.float64)
    onehot[torch.arange(n), labels.to(torch.int64).cpu()] = 1.0
    out = {CROSS: phi.T @ onehot / n}
    if kind == "ridge":
        rows, cols = torch.triu_indices(phi.shape[1], phi.shape[1])
        out[GRAM] = (phi.T @ phi / n)[rows, cols]
    return out


def clip_features(features: torch.Tensor, clip: float) -> torch.Tensor:
    """Each row scaled down to L2 norm `clip` where it is longer (float64)."""
    norms = features.norm(dim=1, keepdim=True)
    return features * torch.clamp(clip / norms.clamp_min(1e-300), max=1.0)


def bound(kind: str, clip: float) -> float:
    """An upper bound on the L2 norm of the statistics vector (every tensor of `specs`, flattened) of any client whose
    features are clipped to `clip`: the mean of φ̃φ̃ᵀ (‖φ̃‖² = clip² + 1 at most; the packed triangle is a part of it)
    and of φ̃yᵀ (‖φ̃‖ at most, y one-hot). Secure aggregation's fixed-point range, so no honest vector is ever clipped."""
    square = clip * clip + 1.0
    return (square * square + square) ** 0.5 if kind == "ridge" else square**0.5


def unpack_gram(packed: torch.Tensor, size: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(size, size)
    full = torch.zeros(size, size, dtype=torch.float64)
    full[rows, cols] = packed.to(torch.float64)
    return full + full.triu(1).T


def ridge(stats: Mapping[str, torch.Tensor], ridge_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight classes x d, bias classes) minimising mean ‖Φ̃W − Y‖² + λ‖W‖² (bias included): exactly what the same
    solve on the pooled data gives. λ is relative to the mean squared feature norm, so one value fits every backbone."""
    cross = stats[CROSS].to(torch.float64)
    size = cross.shape[0]
    gram = unpack_gram(stats[GRAM], size)
    scale = float(torch.diagonal(gram)[:-1].sum()) / max(size - 1, 1)  # the mean per-feature second moment
    system = gram + ridge_lambda * max(scale, 1e-12) * torch.eye(size, dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(cross, factor) if int(info) == 0 else torch.linalg.lstsq(system, cross).solution
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def class_means(stats: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight classes x d, bias classes): each row the unit-length mean feature of its class (zero for a class no
    client has), bias zero: a nearest-class-mean head by cosine. Read from the class sums' directions, so the class
    counts (noised under DP, where one may even be negative) do not enter."""
    sums = stats[CROSS].to(torch.float64)[:-1].T
    norms = sums.norm(dim=1, keepdim=True)
    weight = torch.where(norms > 0, sums / norms.clamp_min(1e-300), torch.zeros_like(sums))
    return weight.contiguous(), torch.zeros(sums.shape[0], dtype=torch.float64)


def noised(kind: str, stats: Mapping[str, torch.Tensor], examples: int, clip: float, multiplier: float,
           generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One client's class-mean statistics with the Gaussian mechanism applied to their sums: adding or removing one
    example (features clipped to `clip`) moves Φ̃ᵀY by φ̃yᵀ, of norm at most √(clip² + 1), so each entry of the sum gets
    noise of standard deviation `multiplier` times that (record-level DP for this one release; client/privacy.py
    accounts it). Only class means: the Gram matrix's noise needs far more regularisation (docs/learning.md)."""
    if kind != "ncm":
        raise ValueError(f"differentially private {kind} statistics are not built: use ncm")
    cross = stats[CROSS].to(torch.float64)
    std = multiplier * (clip * clip + 1.0) ** 0.5
    noise = torch.randn(cross.shape, generator=generator, dtype=torch.float64) * std
    return {CROSS: cross + noise / max(1, examples)}


def solve(kind: str, stats: Mapping[str, torch.Tensor], ridge_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    return ridge(stats, ridge_lambda) if kind == "ridge" else class_means(stats)


def logit_scale(weight: torch.Tensor, bias: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> float:
    """One positive factor for the solved head so that, as a softmax classifier, its logits on an average example spread
    over a few units (cross-entropy fine-tuning then starts with useful gradients). Predictions do not change.

    The spread is read from the statistics: the standard deviation of the logits over the pooled data, from the mean
    feature and the second moment (ridge) or, for class means, the same with the mean feature's scale only."""
    cross = stats[CROSS].to(torch.float64)
    mean_phi = cross.sum(1)[:-1]  # E[φ] (rows of Φ̃ᵀY/n summed over classes)
    if GRAM in stats:
        second = unpack_gram(stats[GRAM], cross.shape[0])[:-1, :-1]  # E[φφᵀ]
        covariance = second - torch.outer(mean_phi, mean_phi)
        variance = float(torch.einsum("cd,de,ce->", weight, covariance, weight)) / weight.shape[0]
    else:
        variance = float(((weight @ mean_phi) ** 2).mean())
    spread = variance**0.5
    return 4.0 / spread if spread > 0 else 1.0


def problem(stats: Mapping[str, torch.Tensor], tolerance: float = 1e-6) -> str:
    """Why these statistics cannot be an honest client's means ("" when they can): its class frequencies are
    non-negative and sum to 1, the Gram matrix's bias entry is the mean of 1 * 1, its diagonal holds mean squares.
    An infinite tolerance: noised statistics (DP), which can be anything finite."""
    if tolerance == float("inf"):
        return ""
    frequencies = stats[CROSS][-1]
    if bool((frequencies < -tolerance).any()) or abs(float(frequencies.sum()) - 1.0) > tolerance:
        return "its class frequencies (the last row of the cross products) are not non-negative fractions summing to 1"
    if GRAM in stats:
        size = stats[CROSS].shape[0]
        rows, cols = torch.triu_indices(size, size)
        packed = stats[GRAM]
        if abs(float(packed[-1]) - 1.0) > tolerance:
            return "its Gram matrix's bias entry is not 1"
        if bool((packed[rows == cols] < -tolerance).any()):
            return "its Gram matrix has a negative mean square"
    return ""
