"""How many training examples each client's shard holds: what a client may claim under `--weighting capped`.

The coordinator reads the shared training split's labels (no pixels) and computes each assigned shard exactly
as the client does (common/shards.py). A client on its own data (`--partition none`) gets the largest assigned
shard's size; with no training split at the coordinator (it may hold only the test split) nothing is capped
and the start-up log says so (`--weight-cap` then sets the cap).
"""

from __future__ import annotations

import threading

import numpy as np

from fedtl.common.config import DataAssignment
from fedtl.common.shards import ShardTable
from fedtl.server.registry import Registry


class ShardSizes:
    def __init__(self, labels: np.ndarray | None, registry: Registry) -> None:
        self.labels, self.registry = labels, registry
        self._table = ShardTable(labels) if labels is not None else None
        self._sizes: dict[DataAssignment, int] = {}
        self._lock = threading.Lock()  # read from the fold thread; assignments only grow

    def cap(self, client: str) -> float | None:
        if self.labels is None:
            return None
        assignment = self._assignment(client)
        if assignment is None:
            return None
        if assignment.scheme == "none":
            with self._lock:
                return float(max(self._sizes.values())) if self._sizes else None
        with self._lock:
            size = self._sizes.get(assignment)
        if size is None:
            size = len(self._table.of(assignment)[0]) if self._table is not None else 0
            with self._lock:
                self._sizes[assignment] = size
        return float(size)

    def _assignment(self, client: str) -> DataAssignment | None:
        plan, registry = self.registry.plan, self.registry
        session = registry.by_name(client)
        if session is not None and session.hello.partition_index == -2:
            return DataAssignment(scheme="none")
        index = registry.pins.get(client, registry.partitions.get(client))
        if index is None or registry.partition_count is None:
            return None
        return DataAssignment(index, registry.partition_count, plan.scheme, plan.alpha, plan.classes_per_client, plan.seed,
                              plan.holdout_fraction, plan.per_class_limit)
