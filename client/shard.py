"""The client's shard: which images of its local training split it trains on and holds out, loaded once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from fedtl.common.config import DataAssignment
from fedtl.common.data import ImageSet, Source
from fedtl.common.shards import shard_indices

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    assignment: DataAssignment
    train: ImageSet
    holdout: ImageSet
    train_digest: str
    holdout_digest: str


def load_shard(source: Source, assignment: DataAssignment) -> Shard:
    """The server and every client compute the same partition from the same assignment; load only ours."""
    source = source.first_per_class(assignment.per_class_limit)
    train_idx, hold_idx = shard_indices(source.labels, assignment)
    start = time.perf_counter()
    loaded = source.load(np.concatenate([train_idx, hold_idx]))
    train = loaded.subset(np.arange(len(train_idx)))
    holdout = loaded.subset(np.arange(len(train_idx), len(loaded)))
    which = "(all local data)" if assignment.scheme == "none" else \
        f"{assignment.partition_index}/{assignment.partition_count} ({assignment.scheme})"
    logger.info("loaded my shard %s: %d training + %d held-out images in %.1f s", which, len(train), len(holdout),
                time.perf_counter() - start)
    return Shard(assignment, train, holdout, train.digest(), holdout.digest())
