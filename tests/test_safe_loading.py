"""Nothing from disk runs code: weights in the torch hub cache and CIFAR-10's python batches are read with
loaders that refuse anything but tensors and arrays."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtl.common import cifar
from fedtl.common.data import open_split
from fedtl.common.errors import DataUnavailable

MARK = "fedtl-planted-code-ran"


class _Payload:
    """Unpickling this would run os.system: what a planted file does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.target}",))


def test_a_planted_pickle_in_the_hub_cache_does_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from fedtl.common.models import build_network

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(tmp_path / MARK)}, cached)
    with pytest.raises(DataUnavailable, match="not a plain state dict"):
        build_network("resnet18", 10, "imagenet")
    assert not (tmp_path / MARK).exists(), "the planted code ran"


def _write_batches(folder: Path, poison: object | None = None) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*cifar.TRAIN, *cifar.TEST]:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3], b"batch_label": b"x"}
        if poison is not None and name == "test_batch":
            batch[b"extra"] = poison
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2))


def test_cifar_batches_load_as_arrays_and_a_planted_one_is_refused(tmp_path: Path) -> None:
    _write_batches(tmp_path / "good" / cifar.FOLDER)
    source = open_split(str(tmp_path / "good"), "train", tmp_path / "cache")
    assert len(source) == 20 and source.classes[:2] == ["c0", "c1"] and source.load().images.shape == (20, 3, 32, 32)
    _write_batches(tmp_path / "bad" / cifar.FOLDER, poison=_Payload(tmp_path / MARK))
    with pytest.raises(DataUnavailable, match="not allowed"):
        open_split(str(tmp_path / "bad"), "test", tmp_path / "cache")
    assert not (tmp_path / MARK).exists(), "the planted code ran"
