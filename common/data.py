"""Datasets as in-memory uint8 image tensors: CIFAR-10, any ImageFolder tree (or a .tar.gz of one), synthetic.

A source lists labels without decoding any image, so partitioning needs no pixels and a client
decodes only its own shard. Small images (CIFAR's 32 px) stay at native size and are upsampled
per batch on the training device (common/batches.py), which is far cheaper than per-sample PIL
transforms in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedtl.common import cifar, plugins
from fedtl.common.errors import ConfigError, DataUnavailable

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
OFFLINE_HINT = (
    "Point --data at a local copy instead: a folder with train/ and test/ class subfolders (ImageFolder), "
    "a .tar.gz of one (e.g. cifar10-jpeg.tar.gz), or a folder holding cifar-10-batches-py; "
    "or use --data synthetic to try the system without real images."
)


@dataclass
class ImageSet:
    """Decoded images (uint8, N x C x H x W) with their labels; small enough to keep in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, indices: np.ndarray | Sequence[int]) -> ImageSet:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def digest(self) -> str:
        """Content hash: identifies exactly these pixels and labels (feature-cache keys depend on it)."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), self.classes)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().astype("<i8").tobytes())
        return h.hexdigest()


@dataclass
class Source:
    """One split of a dataset: labels up front, pixels on demand."""

    name: str
    labels: np.ndarray
    classes: list[str]
    _load: Callable[[np.ndarray], torch.Tensor]
    identity: str = ""  # cheap content identity (file names, sizes, times), without decoding: "" when none is known

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: np.ndarray | None = None) -> ImageSet:
        idx = np.arange(len(self.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        return ImageSet(self._load(idx), torch.as_tensor(self.labels[idx], dtype=torch.int64), self.classes)

    def relabelled(self, mapping: np.ndarray, classes: list[str]) -> Source:
        """The same examples under the run's label order (`mapping[old] = new`), reordered by new label (stable)
        so that a folder tree whose classes merely sort differently lists its examples as the run's order would."""
        labels = mapping[self.labels]
        order = np.argsort(labels, kind="stable")
        inner = self._load
        identity = _derived(self.identity, "relabelled", mapping.tobytes())
        return Source(f"{self.name}[relabelled]", labels[order], classes, lambda idx: inner(order[idx]), identity)

    def held_back(self, test: int, validation: int) -> tuple[Source, Source | None]:
        """(the test images, the validation images) of each class, disjoint: the first `test` of each class (0: all but the
        validation ones) and the `validation` after them. None when no class can spare them (every class must keep at
        least as many test images as it gives to validation)."""
        if validation <= 0:
            return self.first_per_class(test), None
        per_class = [np.flatnonzero(self.labels == c) for c in range(len(self.classes))]
        if any(len(rows) < (test or validation) + validation for rows in per_class):
            return self.first_per_class(test), None
        cut = [test or len(rows) - validation for rows in per_class]
        test_rows = np.sort(np.concatenate([rows[:k] for rows, k in zip(per_class, cut)]))
        val_rows = np.sort(np.concatenate([rows[k : k + validation] for rows, k in zip(per_class, cut)]))
        return self._rows(test_rows, f"test {test or 'all'}/class less {validation}"), self._rows(val_rows, f"validation {validation}/class after {test or 'the test'}")

    def _rows(self, keep: np.ndarray, what: str) -> Source:
        inner = self._load
        return Source(f"{self.name}[{what}]", self.labels[keep], self.classes, lambda idx: inner(keep[idx]), _derived(self.identity, what))

    def first_per_class(self, limit: int) -> Source:
        """Keep the first `limit` examples of each class, in the source's order (sorted file names for folders)."""
        if limit <= 0:
            return self
        keep = np.sort(np.concatenate([np.flatnonzero(self.labels == c)[:limit] for c in range(len(self.classes))]))
        inner = self._load
        return Source(f"{self.name}[:{limit}/class]", self.labels[keep], self.classes, lambda idx: inner(keep[idx]),
                      _derived(self.identity, f"first {limit} per class"))


def open_split(spec: str, split: str, cache_dir: Path, image_size: int = 32) -> Source:
    """Open the `train` or `test` split of `--data spec`: 'cifar10[:ROOT]', 'synthetic[:N]', a folder or a .tar.gz."""
    if split not in ("train", "test"):
        raise ValueError(split)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec, split)
    if plugins.is_plugin(spec):  # the operator's own data function (docs/api.md)
        train, test, classes = plugins.plugin_data(spec)
        inputs, labels = train if split == "train" else test
        return Source(f"{spec}:{split}", labels, classes, lambda idx: inputs[torch.as_tensor(idx)])
    if spec == "cifar10" or spec.startswith("cifar10:"):
        root = Path(spec.split(":", 1)[1]) if ":" in spec else cache_dir / "cifar10"
        return _cifar10(root, split, download=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataUnavailable(f"--data {spec}: no such file or folder. {OFFLINE_HINT}")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DataUnavailable(f"--data {spec}: a file must be a .tar.gz/.tgz/.tar archive of an image folder")
        path = extract_archive(path, cache_dir)
    if (path / "cifar-10-batches-py").is_dir():
        return _cifar10(path, split, download=False)
    return _image_folder(_split_folder(path, split), image_size)


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack once into the cache (safely: tarfile's 'data' filter), atomically so parallel clients don't collide."""
    h = hashlib.sha256()
    with archive.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    target = cache_dir / f"{archive.name.split('.')[0]}-{h.hexdigest()[:12]}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("extracting %s into %s (once)", archive, target)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        try:
            with tarfile.open(archive) as tar:
                _safe_extract(tar, tmp)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataUnavailable(f"--data {archive}: not a readable .tar.gz/.tar archive ({type(exc).__name__}: {exc}); "
                                  "is it truncated? download or copy it again") from None
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """Extract only plain files and folders that stay inside `target` (tarfile's 'data' filter where this
    Python has it, 3.11.4+; the same rules by hand on older 3.11 releases)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    root = target.resolve()
    members = []
    for member in tar.getmembers():
        destination = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (destination != root and root not in destination.parents):
            raise DataUnavailable(f"archive member {member.name!r} is not a plain file inside the archive; refusing to extract")
        member.mode = 0o755 if member.isdir() else 0o644
        members.append(member)
    tar.extractall(target, members=members)


def _split_folder(path: Path, split: str) -> Path:
    """`split`/ in the folder or one level down (a client needs only train/, the server only test/); for train, the
    folder itself when it is a plain tree of class folders with images in them (a site's own images)."""
    for candidate in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (candidate / split).is_dir():
            return candidate / split
    folders = [p for p in path.iterdir() if p.is_dir()] if split == "train" else []
    if any(f.suffix.lower() in IMAGE_SUFFIXES for p in folders for f in p.iterdir()):
        return path
    raise DataUnavailable(f"--data {path}: found no {split}/ folder of class subfolders{' (nor class folders of images in it)' * (split == 'train')}. {OFFLINE_HINT}")


def _image_folder(root: Path, image_size: int) -> Source:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataUnavailable(f"{root}: no class subfolders")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        members = sorted(p.name for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files.extend(root / name / m for m in members)
        labels.extend([label] * len(members))
    if not files:
        raise DataUnavailable(f"{root}: no images")

    def load(idx: np.ndarray) -> torch.Tensor:
        return _decode_files([files[i] for i in idx], image_size)

    h = hashlib.sha256(f"imagefolder:{image_size}".encode())
    for path in files:  # like make: a file rewritten with the same size and time within the same nanosecond goes unseen
        stat = path.stat()
        h.update(f"\0{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return Source(f"imagefolder:{root}", np.asarray(labels, dtype=np.int64), classes, load, h.hexdigest())


def _decode_files(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode to one uint8 tensor. Images keep their size when they all share it (up to image_size)."""
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise DataUnavailable(f"image {path} cannot be read ({exc}); remove or replace it") from None

    if not paths:
        return torch.empty((0, 3, image_size, image_size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(read, paths, chunksize=256))
    first = arrays[0].shape[:2]
    if all(a.shape[:2] == first for a in arrays) and max(first) <= max(image_size, 32):
        stacked = np.stack(arrays)
    else:
        stacked = np.stack([_resize_center(a, image_size) for a in arrays])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def _resize_center(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(array)
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _cifar10(root: Path, split: str, download: bool) -> Source:
    if not (root / cifar.FOLDER / "batches.meta").is_file():
        if not download:
            raise DataUnavailable(f"{root / cifar.FOLDER}: no CIFAR-10 batches there. {OFFLINE_HINT}")
        try:
            cifar.download(root)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise DataUnavailable(f"could not download CIFAR-10 into {root} ({exc}). {OFFLINE_HINT}") from None
    pixels, labels, classes = cifar.load_split(root, split)
    images = torch.from_numpy(pixels)
    identity = hashlib.sha256(pixels.data).hexdigest()  # already decoded: hashing the pixels costs less than reading them did
    return Source(f"cifar10:{root}:{split}", labels, classes, lambda idx: images[torch.as_tensor(idx)], identity)


def _synthetic(spec: str, split: str) -> Source:
    """Class-conditional smooth patterns plus noise: learnable in a few steps, deterministic, no files."""
    try:
        train_n = int(spec.split(":", 1)[1]) if ":" in spec else 1200
    except ValueError:
        raise ConfigError(f"--data {spec}: use synthetic or synthetic:N with N training images") from None
    if train_n < 10:
        raise ConfigError(f"--data {spec}: need at least 10 synthetic training images")
    n = train_n if split == "train" else max(100, train_n // 4)
    classes = [f"class{i}" for i in range(10)]
    templates = torch.nn.functional.interpolate(
        torch.rand((10, 3, 4, 4), generator=torch.Generator().manual_seed(1234)), size=32, mode="bilinear", align_corners=False
    )
    gen = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=gen)]
    noise = torch.rand((n, 3, 32, 32), generator=gen)
    images = ((0.6 * templates[labels] + 0.4 * noise) * 255).round().to(torch.uint8)
    identity = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    return Source(f"synthetic:{train_n}:{split}", labels.numpy(), classes, lambda idx: images[torch.as_tensor(idx)], identity)


def _derived(identity: str, *parts: object) -> str:
    """The identity of a view of a source (a subset, another label order): "" stays unknown."""
    if not identity:
        return ""
    h = hashlib.sha256(identity.encode())
    for part in parts:
        h.update(b"\0" + (part if isinstance(part, bytes) else str(part).encode()))
    return h.hexdigest()
