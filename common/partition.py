"""Split a labelled training set into client shards: deterministic for a seed, disjoint and covering.

Pure numpy: labels in, index arrays out. The server and every client compute the same split
from the same DataAssignment, so each client can load only its own shard.
"""

from __future__ import annotations

import numpy as np

from fedtl.common.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "label-skew")


def partition(
    labels: np.ndarray,
    num_parts: int,
    scheme: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Return `num_parts` sorted index arrays that together cover range(len(labels)) exactly once."""
    labels = np.asarray(labels)
    n = len(labels)
    if num_parts < 1:
        raise ConfigError(f"number of partitions must be >= 1, got {num_parts}")
    if n < num_parts * min_size:
        raise ConfigError(f"{n} training examples cannot fill {num_parts} shards of at least {min_size}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_parts)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"--alpha must be > 0 for dirichlet partitions, got {alpha}")
        parts = _dirichlet(labels, num_parts, alpha, rng, min_size)
    elif scheme == "label-skew":
        parts = _label_skew(labels, num_parts, classes_per_client, rng)
    else:
        raise ConfigError(f"--partition-scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, min_size: int) -> list[np.ndarray]:
    """Per class, share its examples among clients by Dirichlet(alpha) proportions (Hsu et al., 2019)."""
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha))) * len(members)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.asarray(p) for p in parts]
    raise ConfigError(f"dirichlet alpha={alpha} leaves some of {k} shards smaller than {min_size}; raise --alpha")


def _label_skew(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each client sees only `per_client` classes; each class is split evenly among the clients that hold it."""
    classes = rng.permutation(np.unique(labels))
    if per_client < 1 or per_client > len(classes):
        raise ConfigError(f"--classes-per-client must be in 1..{len(classes)}, got {per_client}")
    if k * per_client < len(classes):
        raise ConfigError(f"{k} clients x {per_client} classes cannot cover {len(classes)} classes; raise --classes-per-client")
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(k):
        for j in range(per_client):
            holders[int(classes[(client * per_client + j) % len(classes)])].append(client)
    parts: list[list[int]] = [[] for _ in range(k)]
    for c, owners in holders.items():
        members = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(members, len(owners))):
            parts[owner].extend(chunk.tolist())
    return [np.asarray(p) for p in parts]


def holdout_split(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a shard into (train, held-out) deterministically; the held-out slice evaluates locally."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in [0, 1), got {fraction}")
    count = int(round(len(indices) * fraction))
    if count == 0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(indices))
    return np.sort(indices[order[count:]]), np.sort(indices[order[:count]])


def label_skew_score(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each shard's label distribution and the global one (0 = IID)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    distances = []
    for p in parts:
        if len(p) == 0:
            continue
        local = np.array([(labels[p] == c).mean() for c in classes])
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))
