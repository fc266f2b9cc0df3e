"""Which examples of the shared training split make up a shard: the same computation on every client and on
the coordinator (which uses it to know how many examples a shard holds, and so how many a client may claim)."""

from __future__ import annotations

import numpy as np

from fedtl.common.config import DataAssignment
from fedtl.common.errors import ConfigError
from fedtl.common.partition import holdout_split, partition


def shard_indices(labels: np.ndarray, assignment: DataAssignment) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) into `labels` (the split after its per-class limit)."""
    if assignment.scheme == "none":
        indices = np.arange(len(labels))
    else:
        if assignment.partition_index >= assignment.partition_count:
            raise ConfigError(f"partition {assignment.partition_index}/{assignment.partition_count} does not exist")
        parts = partition(labels, assignment.partition_count, assignment.scheme, assignment.seed, assignment.alpha,
                          assignment.classes_per_client)
        indices = parts[assignment.partition_index]
    return holdout_split(indices, assignment.holdout_fraction, assignment.seed + assignment.partition_index)
