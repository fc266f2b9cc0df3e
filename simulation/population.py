"""The virtual clients' data: the shared training split, cut into the same shards real clients would load, and the
frozen backbone's features of every image computed once for all of them and kept on disk by digest.

A real client computes the features of its own shard (client/runtime.py); here one pass over the whole split serves
every virtual client, and a second run of the same configuration reads them back instead of decoding a single image.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fedtl.common import features
from fedtl.common.batches import InputTransform
from fedtl.common.config import ModelRecipe, TrainConfig
from fedtl.common.data import ImageSet, Source, open_split
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import Network
from fedtl.server.settings.data import PartitionPlan
from fedtl.simulation.work import Population

logger = logging.getLogger(__name__)


def training_source(data: str, data_cache: Path, recipe: ModelRecipe, plan: PartitionPlan) -> Source:
    """The training split as every client's shard is cut from it (load_shard: first the per-class limit)."""
    return open_split(data, "train", data_cache, recipe.image_size).first_per_class(plan.per_class_limit)


def load_population(source: Source, net: Network, first_trainable: int, recipe: ModelRecipe, train: TrainConfig,
                    device: torch.device, cache_dir: Path | None) -> tuple[Population, str]:
    """Cached features when they are exact (a frozen prefix, no augmentation), else the images; and how it went."""
    transform = InputTransform(recipe.mean, recipe.std, recipe.image_size, train.augment)
    own = train.train_fn or train.evaluate_fn  # the operator's functions see the whole model and images, as on real clients
    decision = features.decide("off" if own else train.feature_cache, first_trainable, train.augment)
    if not decision.use:
        start = time.perf_counter()
        decoded = source.load()
        return Population(ImageInputs.of(decoded, transform, device)), (
            f"{len(decoded)} training images decoded in {time.perf_counter() - start:.1f} s (no feature cache: {decision.reason})")
    identity = source.identity
    start = time.perf_counter()
    images: ImageSet | None = None
    if not identity:  # data without a cheap identity (a plugin's tensors): its pixels are the identity
        images = source.load()
        identity = images.digest()
    key = features.cache_key(net, first_trainable, identity, transform.describe())
    cache = features.FeatureCache(cache_dir, keep=8)
    labels = torch.as_tensor(source.labels, dtype=torch.int64, device=device)
    found = cache.lookup("population", key, labels, first_trainable)
    if found is not None:
        return Population(found[0]), f"feature cache read from disk in {time.perf_counter() - start:.2f} s ({cache_dir})"
    images = images if images is not None else source.load()
    logger.info("building the shared feature cache: %d images through the %d frozen stages (once; later runs read it from %s)",
                len(images), first_trainable, cache_dir)
    inputs = ImageInputs.of(images, transform, device)
    stored = cache.store("population", key, features.compute_features(net, inputs, first_trainable), inputs.labels, first_trainable)
    return Population(stored), f"feature cache built in {time.perf_counter() - start:.1f} s: {len(images)} x {tuple(stored.features.shape[1:])}"
