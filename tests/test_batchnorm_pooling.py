"""BatchNorm statistics pooled over every client's data (common/batchnorm.py, --batchnorm pool): the pooled moments of
any split are the moments of every client's batches (for the first layer: of the pooled data), the pass leaves the
model as it was, and a real federation's last round writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from harness import audited_updates

from fedtl.common import batchnorm
from fedtl.common.batches import InputTransform
from fedtl.common.data import open_split
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import build_network
from fedtl.common.partition import partition


def _inputs(tmp_path: Path, n: int = 600) -> tuple[ImageInputs, object]:
    net = build_network("tiny_cnn", 10, "none", seed=0)
    images = open_split(f"synthetic:{n}", "train", tmp_path).load()
    return ImageInputs.of(images, InputTransform(net.spec.mean, net.spec.std, 32, False), torch.device("cpu")), net


def _subset(inputs: ImageInputs, rows: np.ndarray) -> ImageInputs:
    index = torch.as_tensor(rows, dtype=torch.int64)
    return ImageInputs(labels=inputs.labels[index], start_stage=0, images=inputs.images[index], transform=inputs.transform)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_pooled_moments_of_any_split_are_the_first_layers_moments_of_the_pooled_data(tmp_path: Path, scheme: str) -> None:
    inputs, net = _inputs(tmp_path)
    before = {k: v.clone() for k, v in net.module.state_dict().items()}  # type: ignore[attr-defined]
    whole = batchnorm.moments(net, inputs, 0)  # type: ignore[arg-type]
    assert all(torch.equal(before[k], v) for k, v in net.module.state_dict().items()), "the pass moved the model"  # type: ignore[attr-defined]
    parts = partition(inputs.labels.numpy(), 5, scheme, alpha=0.1, seed=3)
    each = [(batchnorm.moments(net, _subset(inputs, rows), 0), len(rows)) for rows in parts if len(rows)]  # type: ignore[arg-type]
    pooled = {name: sum(m[name] * k for m, k in each) / len(inputs) for name in whole}
    assert set(whole) == set(batchnorm.specs(net, 0))  # type: ignore[arg-type]
    for name in (f"{batchnorm.PREFIX}conv1.1.mean", f"{batchnorm.PREFIX}conv1.1.square"):  # its input is the data's, through conv1
        assert torch.allclose(pooled[name], whole[name], rtol=1e-10, atol=1e-12), name
    # deeper layers see inputs normalised by each batch (as in training): their moments depend on how batches are drawn
    assert all(torch.isfinite(v).all() for v in pooled.values())


def test_the_first_layer_gets_the_exact_mean_and_variance_of_its_input(tmp_path: Path) -> None:
    inputs, net = _inputs(tmp_path, 200)
    batchnorm.apply(net, 0, batchnorm.moments(net, inputs, 0))  # type: ignore[arg-type]
    conv, bn = net.module.conv1[0], net.module.conv1[1]  # type: ignore[attr-defined]
    with torch.no_grad():
        x = conv(inputs.batch(torch.arange(len(inputs)))).double()
    assert torch.allclose(bn.running_mean.double(), x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), x.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-6)


def test_only_the_trained_layers_are_collected(tmp_path: Path) -> None:
    _, net = _inputs(tmp_path, 50)
    assert set(batchnorm.layers(net, 0)) == {"conv1.1", "conv2.1"}  # type: ignore[arg-type]
    assert set(batchnorm.layers(net, 1)) == {"conv2.1"}  # type: ignore[arg-type]
    assert batchnorm.layers(net, 3) == {}  # type: ignore[arg-type]


TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--join-grace", "0", "--keep-round-models",
        "--finish-grace", "5", "--wait-timeout", "90", "--train", "all"]


def test_the_last_round_of_a_real_federation_writes_the_pooled_statistics(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*TINY, "--rounds", "2", "--min-clients", "3", "--partition-scheme", "dirichlet", "--alpha", "0.1",
                                "--batchnorm", "pool", "--lr", "0.05"])
    fed.start_server()
    for i in range(3):
        fed.start_client(f"n{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    assert {info["kind"] for _, _, info in audited_updates(tmp_path / "audit", 2)} == {"STATISTICS"}
    rounds = {r["round"]: r for r in fed.rounds()}
    assert rounds[1]["statistics"] == "" and rounds[2]["statistics"] == "batchnorm" and rounds[2]["answered"] == 3
    assert "BatchNorm statistics of 600 examples" in fed.server.log

    trained, final = fed.model(1), fed.model(2)
    net = build_network("tiny_cnn", 10, "none", seed=0)
    net.module.load_state_dict(trained)
    inputs, _ = _inputs(tmp_path)
    central = batchnorm.moments(net, inputs, 0)  # every training image through round 1's model, in one place
    sent = audited_updates(tmp_path / "audit", 2)
    pooled = {name: sum(u[name] * n for u, n, _ in sent) / sum(n for _, n, _ in sent) for name in sent[0][0]}
    for layer, stats in (("conv1.1", central), ("conv2.1", pooled)):  # the first layer: the pooled data's moments exactly
        mean = stats[f"{batchnorm.PREFIX}{layer}.mean"]
        variance = stats[f"{batchnorm.PREFIX}{layer}.square"] - mean * mean
        assert torch.allclose(final[f"{layer}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6), layer
        assert torch.allclose(final[f"{layer}.running_var"].double(), variance, rtol=1e-5, atol=1e-6), layer
        assert not torch.allclose(final[f"{layer}.running_var"], trained[f"{layer}.running_var"]), "FedAvg's statistics were kept"
    moved = {n for n in final if not torch.equal(final[n], trained[n])}
    assert moved <= {f"{layer}.{b}" for layer in ("conv1.1", "conv2.1") for b in ("running_mean", "running_var")}, moved


def _plan(*flags: str):  # type: ignore[no-untyped-def]
    from fedtl.server.config import parse_args

    return parse_args(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", *flags], env={}).statistics


def test_auto_pools_where_it_measured_better_and_pool_says_why_it_cannot() -> None:
    from fedtl.common.errors import ConfigError

    assert _plan("--rounds", "5").batchnorm and _plan("--rounds", "4").batchnorm
    assert not _plan("--rounds", "3").batchnorm  # too few rounds to give one up
    assert not _plan("--rounds", "5", "--fedbn").batchnorm and not _plan("--rounds", "5", "--train", "head").batchnorm
    assert not _plan("--rounds", "5", "--aggregation", "median").batchnorm
    assert not _plan("--rounds", "5", "--batchnorm", "average").batchnorm
    assert _plan("--rounds", "2", "--batchnorm", "pool").batchnorm
    for flags, words in ((["--rounds", "1", "--batchnorm", "pool"], "leaving no round to train"),
                         (["--rounds", "5", "--batchnorm", "pool", "--fedbn"], "--fedbn"),
                         (["--rounds", "5", "--batchnorm", "pool", "--aggregation", "median"], "--aggregation median")):
        with pytest.raises(ConfigError, match=words):
            _plan(*flags)
