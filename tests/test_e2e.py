"""A real server and real clients on 127.0.0.1: the global model is exactly the weighted mean. The clients and the server
run in threads of this process (tests/inprocess_federation.py); the FedAvg run also runs as real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness import audited_updates

from fedtl.common import checkpoint
from fedtl.common.models import load_trained

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--join-grace", "0", "--keep-round-models",
        "--finish-grace", "5", "--wait-timeout", "90"]


@pytest.mark.parametrize("actors", ["threads", pytest.param("processes", marks=pytest.mark.multiprocess)])
def test_fedavg_round_one_is_the_example_weighted_mean_of_client_models(actors: str, request, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    federation = request.getfixturevalue("federation" if actors == "processes" else "inprocess_federation")
    fed = federation([*TINY, "--rounds", "2", "--min-clients", "3", "--partition-scheme", "dirichlet", "--alpha", "1.0",
                      "--batch-size", "16", "--lr", "0.05", "--norm-quantile", "0"])  # plain FedAvg's arithmetic: no default bound
    fed.start_server()
    for i in range(3):
        fed.start_client(f"c{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    assert all(c.wait(60) == 0 for c in fed.clients.values())

    updates = audited_updates(tmp_path / "audit", 1)
    assert len(updates) == 3
    counts = [n for _, n, _ in updates]
    assert len(set(counts)) > 1, "dirichlet shards should differ in size, or the weighting is not tested"
    assert sum(counts) == 600
    w0, w1 = fed.model(0), fed.model(1)
    total = sum(counts)
    for name in w0:
        client_models = [w0[name].double() + u[name].double() for u, _, _ in updates]  # what each client trained
        expected = sum(m * n for m, n in zip(client_models, counts)) / total
        if w0[name].is_floating_point():
            assert torch.allclose(w1[name].double(), expected, rtol=0, atol=1e-6), name
        else:
            assert torch.equal(w1[name], torch.round(expected).to(w1[name].dtype)), name
    unweighted = sum(w0["fc.weight"].double() + u["fc.weight"].double() for u, _, _ in updates) / 3
    assert not torch.allclose(w1["fc.weight"].double(), unweighted, atol=1e-6), "the weighting made no difference"

    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["test_accuracy"] is not None for r in rounds)
    assert rounds[2]["answered"] == 3 and rounds[2]["bytes_up"] > 0 and rounds[2]["bytes_down"] > 0
    assert "round 2/2 | clients 3/3" in fed.server.log and "acc" in fed.server.log
    final = checkpoint.load_tensors(fed.run_dir / "final_model.safetensors")
    assert json.loads(final.metadata["class_names"]) == [f"class{i}" for i in range(10)]  # the saved model names its classes
    model, info = load_trained(fed.run_dir / "final_model.safetensors")  # the README's three lines
    assert info.class_names == tuple(f"class{i}" for i in range(10)) and info.image_size == 32 and info.round == 2
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10) and not model.training
    assert torch.equal(model.state_dict()["fc.weight"], final.tensors["fc.weight"])


def test_fedsgd_applies_the_weighted_mean_gradient(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*TINY, "--rounds", "1", "--min-clients", "2", "--algorithm", "fedsgd", "--lr", "0.5",
                      "--partition-scheme", "dirichlet", "--alpha", "1.0", "--norm-quantile", "0"])  # the unbounded mean gradient
    fed.start_server()
    for i in range(2):
        fed.start_client(f"g{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    updates = audited_updates(tmp_path / "audit", 1)
    assert {info["kind"] for _, _, info in updates} == {"GRADIENT"}
    w0, w1 = fed.model(0), fed.model(1)
    total = sum(n for _, n, _ in updates)
    mean = {k: sum(u[k].double() * n for u, n, _ in updates) / total for k in w0}
    for name in ("conv1.0.weight", "fc.weight", "fc.bias"):  # parameters: w - lr * mean gradient
        assert torch.allclose(w1[name].double(), w0[name].double() - 0.5 * mean[name], atol=1e-6), name
    # buffers (BatchNorm statistics) take the mean of the clients' new values
    assert torch.allclose(w1["conv1.1.running_mean"].double(), w0["conv1.1.running_mean"].double() + mean["conv1.1.running_mean"], atol=1e-6)


def test_head_only_rounds_move_only_the_head_after_round_one(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*TINY, "--rounds", "3", "--min-clients", "2", "--train", "head", "--partition-scheme", "dirichlet",
                      "--alpha", "1.0", "--lr", "0.1", "--head-init", "none", "--norm-quantile", "0"])  # round 1 trains too (tests/test_heads.py: the head from statistics)
    fed.start_server()
    for i in range(2):
        fed.start_client(f"h{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    w0 = fed.model(0)
    head = {"fc.weight", "fc.bias"}
    head_bytes = sum(w0[n].numel() * w0[n].element_size() for n in head)
    full_bytes = sum(t.numel() * t.element_size() for t in w0.values())
    rounds = {r["round"]: r for r in fed.rounds()}
    # round 1: every client downloads the frozen backbone once, plus the head; later rounds: the head only
    assert full_bytes * 2 <= rounds[1]["bytes_down"] < full_bytes * 2 + 8192
    for r in (2, 3):
        assert head_bytes * 2 <= rounds[r]["bytes_down"] < head_bytes * 2 + 4096, rounds[r]
        assert head_bytes * 2 <= rounds[r]["bytes_up"] < head_bytes * 2 + 4096
        assert rounds[r]["clients_cached"] == 2  # both trained on cached features
    for r in (1, 2, 3):
        updates = audited_updates(tmp_path / "audit", r)
        assert all(set(u) == head for u, _, _ in updates)
        before, after = fed.model(r - 1), fed.model(r)
        total = sum(n for _, n, _ in updates)
        for name in head:
            expected = before[name].double() + sum(u[name].double() * n for u, n, _ in updates) / total
            assert torch.allclose(after[name].double(), expected, atol=1e-6)
        for name in set(w0) - head:
            assert torch.equal(after[name], w0[name]), f"frozen {name} moved"
