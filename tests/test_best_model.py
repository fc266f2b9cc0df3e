"""The best model is picked on images the coordinator holds back from its test split (server/best_model.py), never on
the test images it reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtl.common import checkpoint
from fedtl.common.data import open_split
from fedtl.common.errors import ConfigError

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:2000", "--join-grace", "0", "--keep-round-models",
        "--finish-grace", "5", "--wait-timeout", "90"]


def test_validation_images_are_disjoint_from_the_test_images(tmp_path: Path) -> None:
    split = open_split("synthetic:2000", "test", tmp_path)  # 500 images, 50 of each class
    for test_per_class, validation in ((20, 10), (0, 10)):
        test, held = split.held_back(test_per_class, validation)
        assert held is not None
        test_images, held_images = test.load(), held.load()
        assert np.bincount(held.labels, minlength=10).tolist() == [validation] * 10
        assert np.bincount(test.labels, minlength=10).tolist() == [test_per_class or 50 - validation] * 10
        rows = {tuple(x.flatten()[:64].tolist()) for x in test_images.images}
        assert not any(tuple(x.flatten()[:64].tolist()) in rows for x in held_images.images), "an image is in both slices"
        assert test.identity != held.identity
    assert split.held_back(45, 10)[1] is None  # a class would need 55 of its 50 images
    assert split.held_back(0, 30)[1] is None  # the test would keep fewer images of a class than validation takes
    same, none = split.held_back(20, 0)
    assert none is None and len(same) == 200


def test_asking_for_a_slice_the_split_cannot_spare_is_refused(tmp_path: Path) -> None:
    from fedtl.server.app import build
    from fedtl.server.config import parse_args

    cfg = parse_args([*TINY, "--run-dir", str(tmp_path / "run"), "--validation-per-class", "40", "--test-per-class", "20"], env={})
    with pytest.raises(ConfigError, match="--validation-per-class 40 with --test-per-class 20 needs 60 test images of every class"):
        build(cfg)


def test_the_best_round_on_the_validation_slice_is_kept_and_named(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*TINY, "--rounds", "4", "--min-clients", "2", "--validation-per-class", "10", "--test-per-class", "40",
                                "--lr", "0.05", "--batch-size", "16"])
    fed.start_server()
    for i in range(2):
        fed.start_client(f"b{i}", ["--data", "synthetic:2000"])
    assert fed.server.wait(240) == 0, fed.server.log
    rounds = {r["round"]: r for r in fed.rounds()}
    scores = {n: rounds[n]["validation_accuracy"] for n in range(1, 5)}
    assert all(s is not None for s in scores.values())
    best = min(n for n in scores if scores[n] == max(scores.values()))  # ties keep the earlier round
    assert rounds[4]["best_round"] == best
    for n in range(1, 5):  # each round names the best so far
        so_far = {k: v for k, v in scores.items() if k <= n}
        assert rounds[n]["best_round"] == min(k for k in so_far if so_far[k] == max(so_far.values()))
    saved = checkpoint.load_tensors(fed.run_dir / "best_model.safetensors")
    assert saved.metadata["round"] == str(best)
    kept = fed.model(best)
    assert all(torch.equal(saved.tensors[n], kept[n]) for n in kept)
    assert rounds[1]["test_accuracy"] is not None and "val acc" in fed.server.log
    assert f"best on the validation slice: round {best}" in fed.server.log
    lines = (fed.run_dir / "rounds.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["validation_accuracy"] == scores[4]


def test_a_resumed_run_compares_against_the_best_it_had(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fedtl.server.best_model import BestModel
    from fedtl.server.state import StateRegistry

    scores = iter([0.5, 0.4])

    class Scores:
        def run(self):  # type: ignore[no-untyped-def]
            return SimpleNamespace(result=SimpleNamespace(accuracy=next(scores), loss=1.0), seconds=0.0)

    written: list[int] = []
    state = StateRegistry()
    best = BestModel(Scores(), tmp_path / "best.safetensors", lambda n: written.append(n) or bytearray(b"x"), state)  # type: ignore[arg-type, func-returns-value]
    assert best.consider(3).best_round == 3 and written == [3]
    tensors, values = state.save()
    again_state = StateRegistry()
    again = BestModel(Scores(), tmp_path / "best.safetensors", lambda n: written.append(n) or bytearray(b"y"), again_state)  # type: ignore[arg-type, func-returns-value]
    again_state.restore(tensors, values, "checkpoint")
    assert again.consider(4).best_round == 3 and written == [3]  # 0.4 < 0.5: round 3 stays the best, nothing rewritten
    old_state = StateRegistry()
    old = BestModel(Scores(), tmp_path / "best.safetensors", lambda n: bytearray(b"z"), old_state)  # type: ignore[arg-type]
    old_state.restore({}, {}, "an older checkpoint")  # one written before best models existed loads, with no best yet
    assert (old.round, old.accuracy) == (0, -1.0)


def test_a_best_model_becomes_the_file_only_once_its_round_is_checkpointed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fedtl.common.config import ModelRecipe
    from fedtl.server import store
    from fedtl.server.best_model import BestModel
    from fedtl.server.state import StateRegistry

    recipe = ModelRecipe("tiny_cnn", 10, 32, (0.5,), (0.5,))

    def blob(n: int) -> bytearray:
        return store.model_blob(recipe, {"w": torch.full((2,), float(n))}, n, "run")

    class Scores:
        def __init__(self, *accuracies: float) -> None:
            self.left = list(accuracies)

        def run(self):  # type: ignore[no-untyped-def]
            return SimpleNamespace(result=SimpleNamespace(accuracy=self.left.pop(0), loss=1.0), seconds=0.0)

    state = StateRegistry()
    best = BestModel(Scores(0.5, 0.7), tmp_path / "best.safetensors", blob, state)  # type: ignore[arg-type]
    best.consider(1)
    assert not best.path.exists() and best.pending.exists()  # round 1's checkpoint has not landed yet
    best.landed(1)
    assert checkpoint.load_tensors(best.path).metadata["round"] == "1" and not best.pending.exists()
    tensors, values = state.save()  # the checkpoint of round 1
    best.consider(2)  # a better round 2, and then the process dies before round 2's checkpoint lands
    assert best.pending.exists()

    again_state = StateRegistry()
    again = BestModel(Scores(), tmp_path / "best.safetensors", blob, again_state)  # type: ignore[arg-type]
    again_state.restore(tensors, values, "checkpoint")  # the resume repeats round 2: its pending model is not the best
    assert not again.pending.exists() and checkpoint.load_tensors(again.path).metadata["round"] == "1" and again.round == 1

    _, values2 = state.save()  # had round 2's checkpoint landed (the state names round 2) first, the resume keeps round 2's model
    checkpoint.write_bytes_atomic(again.pending, blob(2))
    third_state = StateRegistry()
    third = BestModel(Scores(), tmp_path / "best.safetensors", blob, third_state)  # type: ignore[arg-type]
    third_state.restore({}, values2, "checkpoint")
    assert checkpoint.load_tensors(third.path).metadata["round"] == "2" and third.round == 2
