"""Order-based rules need every update of a round at once: this keeps them as rows of one float32 matrix.

Small rounds (heads) stay in memory; once the rows pass `in_memory_bytes` they go to a file in the run
directory, read back memory-mapped, so a round of full-model updates costs disk, not RAM. A rule sees
`rows` (n x d) and `weights` (n) and returns the combined row; this module turns it back into named tensors.
Every rule works on column blocks, so no step needs more than a block of n columns in RAM.
"""

from __future__ import annotations

import abc
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fedtl.common.errors import FedError
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, Rule
from fedtl.server.validation import Update

BLOCK = 1 << 20  # columns per block
Groups = Sequence[Sequence[slice]]  # column ranges of one kind of tensor (parameters, buffers)


class AggregationError(FedError):
    """The round's updates cannot be combined by the configured rule (too few for it, for instance)."""


class FailedClosed(AggregationError):
    """A secure round's unmasked sum cannot come from valid inputs: someone's input was out of range, and under SecAgg+
    the coordinator cannot tell whose. The round is dropped (the model stays as it was) and the run goes on: one
    participant must not end it."""


class UpdateStack:
    def __init__(self, template: Mapping[str, torch.Tensor], spill_dir: Path | None, in_memory_bytes: int) -> None:
        self.names = list(template)
        self.shapes = [tuple(t.shape) for t in template.values()]
        self.sizes = [t.numel() for t in template.values()]
        self.width = sum(self.sizes)
        self.clients: list[str] = []
        self.weights: list[float] = []
        self._rows: list[np.ndarray] = []
        self._spill_dir, self._in_memory_bytes = spill_dir, in_memory_bytes
        self._file: tempfile._TemporaryFileWrapper | None = None

    def add(self, client: str, update: Update, weight: float) -> None:
        row = np.concatenate([update.tensors[n].detach().reshape(-1).to(torch.float32).numpy() for n in self.names]) \
            if self.names else np.zeros(0, np.float32)
        self.clients.append(client)
        self.weights.append(float(weight))
        if self._file is None and (len(self._rows) + 1) * self.width * 4 > self._in_memory_bytes and self._spill_dir is not None:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(dir=self._spill_dir, prefix="round-updates-", suffix=".f32")
            for held in self._rows:
                self._file.write(held.tobytes())
            self._rows = []
        if self._file is not None:
            self._file.write(row.tobytes())
        else:
            self._rows.append(row)

    def matrix(self) -> np.ndarray:
        if self._file is None:
            return np.stack(self._rows) if self._rows else np.zeros((0, self.width), np.float32)
        self._file.flush()
        return np.memmap(self._file.name, dtype=np.float32, mode="r", shape=(len(self.clients), self.width))

    def tensors(self, row: np.ndarray) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = torch.from_numpy(np.ascontiguousarray(row[start : start + size], dtype=np.float64)).reshape(shape)
            start += size
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # deletes it


def blocks(width: int, rows: int) -> Iterator[slice]:
    step = max(1, BLOCK // max(1, rows))
    for start in range(0, width, step):
        yield slice(start, min(width, start + step))


class StackedRule(Rule):
    """A rule over the whole round's updates; subclasses give `combine`."""

    minimum = 1  # updates needed
    resources: tuple[str, ...] = ("spill_dir",)  # a round's updates outgrow memory into the run folder

    def __init__(self, spill_dir: Path | None = None, in_memory_bytes: int = 256 << 20) -> None:
        self.spill_dir, self.in_memory_bytes = spill_dir, in_memory_bytes

    @abc.abstractmethod
    def combine(self, rows: np.ndarray, weights: np.ndarray, groups: Groups = ()) -> np.ndarray:
        """The round's combined update (float64, d) from its n x d updates and their weights; `groups` are the columns
        of the parameters and of the buffers, for rules that measure distances."""

    def needed(self) -> int:
        return self.minimum

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return StackedAggregator(self, UpdateStack(template, self.spill_dir, self.in_memory_bytes), column_groups(template, context.parameters))


def column_groups(template: Mapping[str, torch.Tensor], parameters: frozenset[str]) -> Groups:
    """The row's columns of parameters, and of buffers (BatchNorm statistics), each as a list of slices."""
    found: tuple[list[slice], list[slice]] = ([], [])
    start = 0
    for name, tensor in template.items():
        found[0 if name in parameters else 1].append(slice(start, start + tensor.numel()))
        start += tensor.numel()
    return tuple(group for group in found if group)


class StackedAggregator(Aggregator):
    def __init__(self, rule: StackedRule, stack: UpdateStack, groups: Groups = ()) -> None:
        self.rule, self.stack, self.groups = rule, stack, groups

    def add(self, client: str, update: Update, weight: float) -> None:
        self.stack.add(client, update, weight)

    def result(self) -> Aggregate:
        n = len(self.stack.clients)
        if n < self.rule.needed():
            raise AggregationError(f"--aggregation {self.rule.name} needs at least {self.rule.needed()} updates a round, got {n}: "
                                   "select more clients (--clients-per-round, --min-fit-clients) or lower --byzantine")
        try:
            weights = np.asarray(self.stack.weights, dtype=np.float64)
            combined = self.rule.combine(self.stack.matrix(), weights, self.groups)
            return Aggregate(self.stack.tensors(combined), float(weights.sum()), n)
        finally:
            self.stack.close()

    @property
    def count(self) -> int:
        return len(self.stack.clients)


def squared_distances(rows: np.ndarray, groups: Groups = ()) -> np.ndarray:
    """n x n squared Euclidean distances, accumulated over column blocks (float64).

    With two groups (the parameters' columns and the buffers'), each group's distances are divided by its rows' median
    squared norm before they are added, so neither drowns the other: in full fine-tuning BatchNorm variances move ~100x
    more than the weights, and a weight update scaled 10x would hide under them (measured: bench/robustness)."""
    n = rows.shape[0]
    total = np.zeros((n, n))
    for group in groups if len(groups) > 1 else ((slice(0, rows.shape[1]),),):
        gram = np.zeros((n, n))
        for piece in group:
            for cols in blocks(piece.stop - piece.start, n):
                block = np.asarray(rows[:, piece.start + cols.start : piece.start + cols.stop], dtype=np.float64)
                gram += block @ block.T
        norms = np.diag(gram)
        distances = np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)
        scale = float(np.median(norms)) if len(groups) > 1 else 1.0
        total += distances / scale if scale > 0 else distances
    return total


def weighted_average(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    if not total > 0 or not math.isfinite(total):
        raise AggregationError("the selected updates carry no weight")
    out = np.zeros(rows.shape[1])
    for cols in blocks(rows.shape[1], rows.shape[0]):
        out[cols] = weights @ np.asarray(rows[:, cols], dtype=np.float64) / total
    return out
