"""Data sources: labels without pixels, shards decoded alone, archives unpacked safely, clear offline errors."""

from __future__ import annotations

import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedtl.common.batches import InputTransform, batches
from fedtl.common.data import open_split
from fedtl.common.errors import ConfigError, DataUnavailable


def _image_folder(root: Path, per_class: int = 3, size: int = 8) -> None:
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((size, size, 3), 40 * c + i, dtype=np.uint8)).save(folder / f"{i:04d}.png")


def test_synthetic_is_deterministic_and_split() -> None:
    train, test = open_split("synthetic:200", "train", Path(".")), open_split("synthetic:200", "test", Path("."))
    assert len(train) == 200 and len(test) == 100 and train.classes == test.classes
    a, b = train.load(np.arange(10)), open_split("synthetic:200", "train", Path(".")).load(np.arange(10))
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8 and a.images.shape == (10, 3, 32, 32)
    with pytest.raises(ConfigError):
        open_split("synthetic:x", "train", Path("."))


def test_image_folder_lists_labels_and_decodes_only_what_is_asked(tmp_path: Path) -> None:
    _image_folder(tmp_path / "ds")
    source = open_split(str(tmp_path / "ds"), "train", tmp_path / "cache")
    assert source.classes == ["cat", "dog"] and source.labels.tolist() == [0, 0, 0, 1, 1, 1]
    shard = source.load(np.array([1, 4]))
    assert shard.labels.tolist() == [0, 1] and int(shard.images[1, 0, 0, 0]) == 41
    first = source.first_per_class(2)
    assert first.labels.tolist() == [0, 0, 1, 1] and int(first.load(np.array([3])).images[0, 0, 0, 0]) == 41


def test_a_plain_tree_of_class_folders_is_a_sites_training_data(tmp_path: Path) -> None:
    """A site's own images need no train/ folder: class folders directly under --data are its training split."""
    _image_folder(tmp_path / "ds")
    site = tmp_path / "ds" / "train"  # cat/ and dog/, nothing else
    source = open_split(str(site), "train", tmp_path / "cache")
    assert source.classes == ["cat", "dog"] and len(source) == 6
    with pytest.raises(DataUnavailable, match="found no test/ folder"):  # the coordinator's test split still needs its folder
        open_split(str(site), "test", tmp_path / "cache")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataUnavailable, match=r"nor class folders of images in it"):
        open_split(str(tmp_path / "empty"), "train", tmp_path / "cache")


def test_tar_archives_unpack_once_into_the_cache(tmp_path: Path) -> None:
    _image_folder(tmp_path / "src" / "mydata")
    archive = tmp_path / "mydata.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "mydata", arcname="mydata")
    source = open_split(str(archive), "test", tmp_path / "cache")
    assert len(source) == 6
    extracted = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("mydata-")]
    assert len(extracted) == 1
    assert len(open_split(str(archive), "train", tmp_path / "cache")) == 6
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_missing_and_offline_data_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataUnavailable, match="no train/ folder"):
        (tmp_path / "empty").mkdir()
        open_split(str(tmp_path / "empty"), "train", tmp_path)
    with pytest.raises(DataUnavailable, match="no such file"):
        open_split(str(tmp_path / "nope"), "train", tmp_path)
    import torchvision

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataUnavailable) as info:
        open_split("cifar10", "train", tmp_path)
    assert "cifar10-jpeg.tar.gz" in str(info.value) and "--data" in str(info.value)


def test_transform_scales_resizes_and_normalises() -> None:
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = InputTransform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 8)(images)
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, torch.ones_like(x))
    g = torch.Generator().manual_seed(0)
    aug = InputTransform((0.0,) * 3, (1.0,) * 3, 4, augment=True)(torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8), g)
    assert aug.shape == (5, 3, 4, 4)


def test_batches_cover_every_index_once_in_a_seeded_order() -> None:
    a = torch.cat(list(batches(10, 3, True, torch.Generator().manual_seed(1))))
    b = torch.cat(list(batches(10, 3, True, torch.Generator().manual_seed(1))))
    assert sorted(a.tolist()) == list(range(10)) and torch.equal(a, b)


def test_a_client_folder_needs_only_train(tmp_path: Path) -> None:
    _image_folder(tmp_path / "site")
    import shutil

    shutil.rmtree(tmp_path / "site" / "test")
    assert len(open_split(str(tmp_path / "site"), "train", tmp_path)) == 6
    with pytest.raises(DataUnavailable, match="no test/ folder"):
        open_split(str(tmp_path / "site"), "test", tmp_path)
