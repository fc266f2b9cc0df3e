"""A statistics job's answer: how many examples of each class this site's shard holds (docs/jobs.md).

The shard is the one a training job with the same flags trains on (the offer's DataAssignment, common/shards.py). With
the job's --statistics-epsilon every count gets Gaussian noise (one record moves one count by one: L2 sensitivity 1),
recorded in the site's privacy ledger first; the example count is the noised counts' sum.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from fedtl.client.privacy import PrivacyBudget
from fedtl.common.config import DataAssignment
from fedtl.common.data import Source
from fedtl.common.jobs import SiteStatistics
from fedtl.common.shards import shard_indices

logger = logging.getLogger("client")


def site_statistics(source: Source, assignment: DataAssignment | None, epsilon: float, budget: PrivacyBudget) -> SiteStatistics:
    assignment = assignment or DataAssignment(scheme="none")
    source = source.first_per_class(assignment.per_class_limit)
    labels = np.asarray(source.labels)
    train, _ = shard_indices(labels, assignment)
    counts = np.bincount(labels[train], minlength=len(source.classes)).astype(np.float64)
    if epsilon:
        std = budget.release_counts(epsilon)
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # never the run's seed: the noise must be secret
        counts = np.maximum(counts + rng.normal(0.0, std, counts.shape), 0.0)
        logger.info("statistics: counts of %d classes noised (std %.3g, ε %g at the site's δ)", len(counts), std, epsilon)
    return SiteStatistics(float(counts.sum()), tuple(source.classes), tuple(float(c) for c in counts))
