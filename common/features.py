"""Feature cache: run the frozen prefix of the network once per dataset, train and evaluate the suffix on it.

Exact by construction: frozen stages run in eval mode (BatchNorm statistics fixed) with no
random augmentation, so their output for an image never changes while the prefix weights stay
the same. The cache key hashes the prefix weights, the image pixels and labels, and the input
transform, so a stale cache is never used; on disk it is a safetensors file named by that key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedtl.common import checkpoint, tensorcodec
from fedtl.common.batches import batches, inference_batch_size
from fedtl.common.errors import ConfigError
from fedtl.common.inputs import FeatureInputs, ImageInputs, Inputs
from fedtl.common.models import Network, eval_mode
from fedtl.common.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheDecision:
    use: bool
    reason: str


def decide(mode: str, first_trainable: int, augment: bool) -> CacheDecision:
    """auto = on exactly when it is exact; on = insist (error if inexact); off = never."""
    if mode == "off":
        return CacheDecision(False, "--feature-cache off")
    if first_trainable == 0:
        reason = "nothing is frozen (--train all)"
    elif augment:
        reason = "random augmentation changes every image each epoch, so frozen features are not reusable"
    else:
        return CacheDecision(True, f"frozen prefix of {first_trainable} stages, no augmentation")
    if mode == "on":
        raise ConfigError(f"--feature-cache on cannot be exact: {reason}; use auto or off")
    return CacheDecision(False, reason)


def prefix_digest(net: Network, stop: int) -> str:
    """sha256 over the frozen stages' weights and buffers (their encoded blob)."""
    state = net.module.state_dict()
    names = [n for names in net.stage_tensors[:stop] for n in names]
    return tensorcodec.sha256_hex(tensorcodec.encode({n: state[n] for n in names}))


def cache_key(net: Network, stop: int, data_digest: str, transform_id: str) -> str:
    h = hashlib.sha256()
    for part in (net.spec.name, str(stop), prefix_digest(net, stop), data_digest, transform_id):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class BuildReport:
    key: str
    seconds: float
    source: str  # "computed", "memory" or "disk"


@torch.no_grad()
def compute_features(net: Network, images: ImageInputs, stop: int, batch_size: int = 0) -> torch.Tensor:
    """Outputs of stages[:stop] for every image, in order, batched on the images' device."""
    batch_size = batch_size or inference_batch_size(images.transform.image_size)
    # no_grad, not inference_mode: the features are later inputs of autograd (a head trained on them); and without it a
    # backbone whose weights require grad (a statistics round before --train all) would keep every batch's graph
    with torch.no_grad(), eval_mode(net, stop):
        steps = track(batches(len(images), batch_size, shuffle=False), "feature cache", -(-len(images) // batch_size), " batches")
        parts = [net.forward(images.batch(idx), 0, stop) for idx in steps]
    return torch.cat(parts) if parts else torch.empty(0)


def features_at(net: Network, inputs: Inputs, stage: int) -> FeatureInputs:
    """Inputs as features entering `stage`: cached ones as they are when they already are, else through the network."""
    if isinstance(inputs, FeatureInputs) and inputs.start_stage == stage:
        return inputs
    if isinstance(inputs, ImageInputs):
        return FeatureInputs(labels=inputs.labels, start_stage=stage, features=compute_features(net, inputs, stage))
    with torch.no_grad(), eval_mode(net):
        out = torch.cat([net.forward(inputs.batch(idx), inputs.start_stage, stage)
                         for idx in torch.arange(len(inputs)).split(256)]) if len(inputs) else torch.empty(0)
    return FeatureInputs(labels=inputs.labels, start_stage=stage, features=out)


class FeatureCache:
    """Remembers the last features it built (per purpose) in memory, and optionally on disk under `folder`, where the
    `keep` most recently used files per purpose stay (1 in a client's work dir; more in a cache shared by runs)."""

    def __init__(self, folder: Path | None = None, keep: int = 1) -> None:
        self.folder = folder
        self.keep = keep
        self._memory: dict[str, tuple[str, FeatureInputs]] = {}

    def get(self, purpose: str, net: Network, images: ImageInputs, data_digest: str, stop: int) -> tuple[FeatureInputs, BuildReport]:
        start = time.perf_counter()
        key = cache_key(net, stop, data_digest, images.transform.describe())
        found = self.lookup(purpose, key, images.labels, stop)
        if found is not None:
            return found
        logger.info("building the %s feature cache: %d images through the %d frozen stages (once; later rounds reuse it)",
                    purpose, len(images), stop)
        inputs = self.store(purpose, key, compute_features(net, images, stop), images.labels, stop)
        report = BuildReport(key, time.perf_counter() - start, "computed")
        logger.info("feature cache computed for %s: %d x %s in %.2f s (key %s…)", purpose, len(images),
                    tuple(inputs.features.shape[1:]), report.seconds, key[:12])
        return inputs, report

    def lookup(self, purpose: str, key: str, labels: torch.Tensor, stop: int) -> tuple[FeatureInputs, BuildReport] | None:
        """The features under `key` from memory or disk, without the images; None when they were never built."""
        start = time.perf_counter()
        held = self._memory.get(purpose)
        if held and held[0] == key:
            return held[1], BuildReport(key, time.perf_counter() - start, "memory")
        features = self._from_disk(purpose, key, len(labels))
        if features is None:
            return None
        inputs = FeatureInputs(labels=labels, start_stage=stop, features=features.to(labels.device))
        self._memory[purpose] = (key, inputs)
        report = BuildReport(key, time.perf_counter() - start, "disk")
        logger.info("feature cache read from disk for %s: %d x %s in %.2f s (key %s…)", purpose, len(labels),
                    tuple(features.shape[1:]), report.seconds, key[:12])
        return inputs, report

    def store(self, purpose: str, key: str, features: torch.Tensor, labels: torch.Tensor, stop: int) -> FeatureInputs:
        self._to_disk(purpose, key, features)
        inputs = FeatureInputs(labels=labels, start_stage=stop, features=features.to(labels.device))
        self._memory[purpose] = (key, inputs)
        return inputs

    def _path(self, purpose: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"features-{purpose}-{key}.safetensors"

    def _from_disk(self, purpose: str, key: str, rows: int) -> torch.Tensor | None:
        path = self._path(purpose, key)
        if path is None or not path.is_file():
            return None
        try:
            decoded = checkpoint.load_tensors(path)
            features = decoded.tensors["features"]
            if decoded.metadata.get("key") != key or features.shape[0] != rows:
                raise ValueError("key or size mismatch")
            os.utime(path)  # most recently used: the last to be pruned
            return features.clone()
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
            return None

    def _to_disk(self, purpose: str, key: str, features: torch.Tensor) -> None:
        path = self._path(purpose, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_tensors(path, {"features": features.cpu().contiguous()}, {"key": key})
        older = sorted((p for p in path.parent.glob(f"features-{purpose}-*.safetensors") if p != path),
                       key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in older[max(self.keep - 1, 0):]:  # the least recently used beyond `keep` go
            stale.unlink(missing_ok=True)
