"""Class folders are matched by name: the same names in another order are mapped, other names are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedtl.client.runtime import ClientRuntime
from fedtl.common.classes import label_map
from fedtl.common.config import ModelRecipe
from fedtl.common.data import open_split
from fedtl.common.errors import DataUnavailable


def image_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    for index, name in enumerate(classes):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 10 * index + i, dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_the_same_names_in_another_order_are_mapped_and_others_refused() -> None:
    assert label_map(["a", "b"], ("a", "b"), "x") is None
    assert label_map(["bird", "cat", "dog"], ("dog", "cat", "bird"), "x").tolist() == [2, 1, 0]
    with pytest.raises(DataUnavailable) as info:
        label_map(["chat", "chien"], ("cat", "dog"), "--data /site")
    message = str(info.value)
    assert "--data /site" in message and "missing ['cat', 'dog']" in message and "unexpected ['chat', 'chien']" in message


def test_a_site_whose_folders_sort_differently_trains_on_the_runs_labels(tmp_path: Path) -> None:
    source = open_split(str(image_folder(tmp_path / "site", ["bird", "cat", "dog"])), "train", tmp_path / "cache")
    run = ["dog", "cat", "bird"]
    relabelled = source.relabelled(label_map(source.classes, tuple(run), "x"), run)
    loaded = relabelled.load()
    assert relabelled.classes == run and loaded.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the dog images (folder index 2 on disk, pixel values 20..22) now carry label 0
    assert loaded.images[:3, 0, 0, 0].tolist() == [20, 21, 22]


def _recipe(classes: tuple[str, ...]) -> ModelRecipe:
    return ModelRecipe("tiny_cnn", len(classes), 32, (0.5,) * 3, (0.5,) * 3, "all", (), classes)


def test_the_client_refuses_a_run_with_other_class_names(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "site", ["chat", "chien"])
    runtime = ClientRuntime(str(data), tmp_path / "cache", tmp_path / "work", torch.device("cpu"), amp=False, name="c")
    with pytest.raises(DataUnavailable, match="missing \\['cat', 'dog'\\]"):
        runtime.set_recipe(_recipe(("cat", "dog")))
    runtime.set_recipe(_recipe(("chien", "chat")))  # same names, another order: mapped
    assert runtime.open_data().classes == ["chien", "chat"]
