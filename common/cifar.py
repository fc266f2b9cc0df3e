"""CIFAR-10's python batches, read without running anything they contain.

The files are pickles of plain dicts holding a numpy uint8 array and lists. The reader below
resolves only the numpy names that rebuild an array (an allowlist, like torch.load's weights_only),
so a planted or corrupted file fails with an error instead of running code; torchvision's dataset
class unpickles them freely, so it is used for the download only.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fedtl.common.errors import DataUnavailable

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes (harmless: it only encodes text)
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def read_batch(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            content = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataUnavailable(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc}); download it again") from None
    if not isinstance(content, dict):
        raise DataUnavailable(f"{path}: not a CIFAR-10 batch (a {type(content).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N x 3 x 32 x 32 uint8, labels, class names) of the train or test split under root/cifar-10-batches-py."""
    folder = root / FOLDER
    images: list[np.ndarray] = []
    labels: list[int] = []
    for name in TRAIN if split == "train" else TEST:
        batch = read_batch(folder / name)
        data = batch.get("data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataUnavailable(f"{folder / name}: its data is not N x 3072 uint8 pixels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(label) for label in batch.get("labels", []))
    meta = read_batch(folder / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    pixels = np.concatenate(images)
    if len(labels) != len(pixels) or len(classes) != 10:
        raise DataUnavailable(f"{folder}: labels, images and class names do not agree")
    return pixels, np.asarray(labels, dtype=np.int64), classes


def download(root: Path) -> None:
    """Fetch and unpack the python version into root (torchvision's downloader checks the archive's md5)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(URL, str(root), filename="cifar-10-python.tar.gz", md5=ARCHIVE_MD5)
