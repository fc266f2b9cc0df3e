"""The virtual clients' data: the shared training split, cut into the same shards real clients would load, and the
frozen backbone's features of every image computed once for all of them and kept on disk by digest.

A real client computes the features of its own shard (client/runtime.py); here one pass over the whole split serves
every virtual client, and a second run of the same configuration reads them back instead of decoding a single image.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fedtl.common import checkpoint, features
from fedtl.common.batches import InputTransform
from fedtl.common.config import DataAssignment, ModelRecipe, TrainConfig
from fedtl.common.data import Source, open_split
from fedtl.common.inputs import FeatureInputs, ImageInputs
from fedtl.common.models import Network
from fedtl.common.partition import holdout_split, partition
from fedtl.server.config import PartitionPlan
from fedtl.server.simulate.work import Population

logger = logging.getLogger(__name__)


def training_source(data: str, data_cache: Path, recipe: ModelRecipe, plan: PartitionPlan) -> Source:
    """The training split as every client's shard is cut from it (load_shard: first the per-class limit)."""
    return open_split(data, "train", data_cache, recipe.image_size).first_per_class(plan.per_class_limit)


def load_population(source: Source, net: Network, first_trainable: int, recipe: ModelRecipe, train: TrainConfig,
                    device: torch.device, cache_dir: Path | None) -> tuple[Population, str]:
    """Cached features when they are exact (a frozen prefix, no augmentation), else the images; and how it went."""
    transform = InputTransform(recipe.mean, recipe.std, recipe.image_size, train.augment)
    decision = features.decide(train.feature_cache, first_trainable, train.augment)
    if not decision.use:
        start = time.perf_counter()
        images = source.load()
        return Population(ImageInputs.of(images, transform, device)), (
            f"{len(images)} training images decoded in {time.perf_counter() - start:.1f} s (no feature cache: {decision.reason})")
    identity = source.identity
    start = time.perf_counter()
    images = None
    if not identity:  # data without a cheap identity (a plugin's tensors): its pixels are the identity
        images = source.load()
        identity = images.digest()
    key = features.cache_key(net, first_trainable, identity, transform.describe())
    path = None if cache_dir is None else cache_dir / f"features-population-{key}.safetensors"
    cached = _read(path, key, len(source))
    if cached is not None:
        how = f"feature cache read from disk in {time.perf_counter() - start:.2f} s ({path})"
        return Population(FeatureInputs(labels=torch.as_tensor(source.labels, dtype=torch.int64, device=device), start_stage=first_trainable,
                                        features=cached.to(device))), how
    images = images if images is not None else source.load()
    logger.info("building the shared feature cache: %d images through the %d frozen stages (once; later runs read it from %s)",
                len(images), first_trainable, cache_dir)
    inputs = ImageInputs.of(images, transform, device)
    computed = features.compute_features(net, inputs, first_trainable)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_tensors(path, {"features": computed.cpu().contiguous()}, {"key": key})
    return Population(FeatureInputs(labels=inputs.labels, start_stage=first_trainable, features=computed)), (
        f"feature cache built in {time.perf_counter() - start:.1f} s: {len(images)} x {tuple(computed.shape[1:])}")


def _read(path: Path | None, key: str, rows: int) -> torch.Tensor | None:
    if path is None or not path.is_file():
        return None
    try:
        decoded = checkpoint.load_tensors(path)
        tensor = decoded.tensors["features"]
        if decoded.metadata.get("key") != key or tensor.shape[0] != rows:
            raise ValueError("key or size mismatch")
        return tensor
    except Exception as exc:  # a damaged cache file is rebuilt, never trusted
        logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None


class Shards:
    """Each shard's (training, held-out) indices, as `common/shards.shard_indices` computes them, with the partition
    of the whole split computed once (not once per client)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def of(self, assignment: DataAssignment) -> tuple[np.ndarray, np.ndarray]:
        if assignment.scheme == "none":
            indices = np.arange(len(self.labels))
        else:
            indices = self._parts(assignment.partition_count, assignment.scheme, assignment.seed, assignment.alpha,
                                  assignment.classes_per_client)[assignment.partition_index]
        return holdout_split(indices, assignment.holdout_fraction, assignment.seed + assignment.partition_index)

    @functools.lru_cache(maxsize=4)
    def _parts(self, count: int, scheme: str, seed: int, alpha: float, classes_per_client: int) -> list[np.ndarray]:
        return partition(self.labels, count, scheme, seed, alpha, classes_per_client)
