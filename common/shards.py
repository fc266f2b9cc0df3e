"""Which examples of the shared training split make up a shard: the same computation on every client and on
the coordinator (which uses it to know how many examples a shard holds, and so how many a client may claim)."""

from __future__ import annotations

import functools

import numpy as np

from fedtl.common.config import DataAssignment
from fedtl.common.errors import ConfigError
from fedtl.common.partition import holdout_split, partition


def shard_indices(labels: np.ndarray, assignment: DataAssignment) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) into `labels` (the split after its per-class limit)."""
    return ShardTable(labels).of(assignment)


class ShardTable:
    """`shard_indices` for many shards of one split: the partition of the whole split is computed once per
    (count, scheme, seed, alpha, classes per client), not once per shard (10,000 clients: once, not 10,000 times)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def of(self, assignment: DataAssignment) -> tuple[np.ndarray, np.ndarray]:
        if assignment.scheme == "none":
            indices = np.arange(len(self.labels))
        else:
            if assignment.partition_index >= assignment.partition_count:
                raise ConfigError(f"partition {assignment.partition_index}/{assignment.partition_count} does not exist")
            parts = self._parts(assignment.partition_count, assignment.scheme, assignment.seed, assignment.alpha,
                                assignment.classes_per_client)
            indices = parts[assignment.partition_index]
        return holdout_split(indices, assignment.holdout_fraction, assignment.seed + assignment.partition_index)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one table per split, alive as long as its run)
    def _parts(self, count: int, scheme: str, seed: int, alpha: float, classes_per_client: int) -> list[np.ndarray]:
        return partition(self.labels, count, scheme, seed, alpha, classes_per_client)
