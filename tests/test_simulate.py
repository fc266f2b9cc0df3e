"""The simulation engine: virtual clients train as real ones would (the vectorised heads against `train_local`), and a
simulated run ends with the very model a real federation (server and client processes over gRPC) ends with.
Simulations run in this process (simulation/app.py's run(), as `python -m simulation` calls it); the process-pool and
Ray backends are in test_simulation_backends.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import Federation

from fedtl.common import checkpoint
from fedtl.common.config import TrainConfig
from fedtl.common.heads import linear_head
from fedtl.common.inputs import FeatureInputs
from fedtl.common.models import build_network
from fedtl.simulation.work import ClientJob, Population, Trainer


def _trainer(vectorise: bool, population: Population) -> Trainer:
    pytest.importorskip("timm")
    net = build_network("efficientnet_lite0", 10, "none", seed=0)  # its head: Linear(1280, 10)
    name, linear = net.stages[-1]
    net.stages[-1] = (name, torch.nn.Sequential(torch.nn.Dropout(0.2), linear))  # as timm builds it with drop_rate=0.2
    net.module.eval()
    return Trainer(net, len(net.stages) - 1, population, vectorise)


@pytest.mark.parametrize("cfg", [TrainConfig(lr=0.05, batch_size=16, local_epochs=2),
                                 TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=7, max_steps=3)])
def test_heads_trained_together_equal_heads_trained_one_by_one(cfg: TrainConfig) -> None:
    rng = np.random.default_rng(0)
    features = torch.randn(400, 1280)
    population = Population(FeatureInputs(labels=torch.as_tensor(rng.integers(0, 10, 400)), start_stage=0, features=features))
    together, alone = _trainer(True, population), _trainer(False, population)
    population.inputs.start_stage = len(together.net.stages) - 1
    assert linear_head(together.net.stages[-1][1])[1] == pytest.approx(0.2)  # dropout is in play, and must match too
    state = {n: t.detach().clone() for n, t in together.net.module.state_dict().items() if n in set(together.net.stage_tensors[-1])}
    sizes = [17, 40, 64, 3, 100, 1]
    jobs = [ClientJob(f"c{i}", rng.choice(400, size, replace=False), np.arange(0), seed=1000 + i, evaluate=False) for i, size in enumerate(sizes)]
    assert together._vectorisable(cfg, state) and not alone._vectorisable(cfg, state)
    a, b = together.train(state, jobs, cfg), alone.train(state, jobs, cfg)
    for x, y in zip(a, b):
        assert x.name == y.name and x.num_examples == y.num_examples
        for name in state:
            assert torch.allclose(x.update[name], y.update[name], atol=2e-6, rtol=1e-4), (x.name, name, (x.update[name] - y.update[name]).abs().max())
        assert x.metrics.train_loss == pytest.approx(y.metrics.train_loss, rel=1e-5)
        assert x.metrics.train_accuracy == pytest.approx(y.metrics.train_accuracy)
        assert x.metrics.steps == y.metrics.steps
    assert any(r.update[n].abs().max() > 1e-3 for r in a for n in state)  # they trained


RECIPE = ["--model", "efficientnet_lite0", "--weights", "none", "--data", "synthetic:240", "--train", "head", "--rounds", "2",
          "--lr", "0.1", "--batch-size", "16", "--local-epochs", "2", "--seed", "3", "--partition-scheme", "dirichlet",
          "--alpha", "0.5", "--client-eval-every", "1", "--holdout-fraction", "0.2", "--keep-round-models"]


@pytest.mark.multiprocess
def test_a_simulated_run_ends_with_the_model_a_real_federation_ends_with(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("timm")
    (tmp_path / "real").mkdir()
    fed = Federation(tmp_path / "real", [*RECIPE, "--min-clients", "3", "--join-grace", "0", "--finish-grace", "5", "--wait-timeout", "120"])
    try:
        fed.start_server()
        for name in ("a", "b", "c"):
            fed.start_client(name, ["--data", "synthetic:240"])
        assert fed.server.wait(240) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    sim_dir = tmp_path / "sim"
    with caplog.at_level(logging.INFO):
        simulated = simulate_here(sim_dir, tmp_path / "cache", *RECIPE, "--virtual-clients", "3")
    log, _ = caplog.text, caplog.clear()
    real = checkpoint.load_tensors(fed.run_dir / "final_model.safetensors").tensors
    assert real.keys() == simulated.keys()
    changed = 0
    for name in real:
        assert torch.allclose(real[name].float(), simulated[name].float(), atol=2e-5), (name, (real[name] - simulated[name]).abs().max())
        changed += int(not torch.equal(real[name], fed.model(0)[name]))
    assert changed == 2  # the head's weight and bias moved; the frozen backbone did not
    real_rounds, sim_rounds = fed.rounds(), [json.loads(line) for line in (sim_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in sim_rounds] == [0, 1, 2]
    for r, s in zip(real_rounds, sim_rounds):
        assert (r["examples"], r["answered"], r["bytes_up"]) == (s["examples"], s["answered"], s["bytes_up"])
        assert s["test_loss"] == pytest.approx(r["test_loss"], rel=1e-4)
        if r["round"] == 1:  # a closed-form head from the clients' statistics (--head-init auto): nothing trained
            assert r["statistics"] == s["statistics"] == "ridge" and r["train_loss"] is None and s["train_loss"] is None
        elif r["round"]:
            assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
            assert s["client_eval_accuracy"] == pytest.approx(r["client_eval_accuracy"], abs=1e-6)
    assert "virtual clients joined" in log and "round 2/2 | clients 3/3" in log
    # a second run of the same configuration reads the shared features back instead of computing them
    with caplog.at_level(logging.INFO):
        again = simulate_here(tmp_path / "sim2", tmp_path / "cache", *RECIPE, "--virtual-clients", "3")
    assert "feature cache read from disk" in caplog.text, caplog.text[-2000:]
    assert torch.equal(again["classifier.weight"], simulated["classifier.weight"])


def simulate_here(run_dir: Path, cache: Path, *args: str) -> dict[str, torch.Tensor]:
    """`python -m simulation ARGS`, in this process."""
    from fedtl.simulation.app import run
    from fedtl.simulation.config import parse_simulation_args

    assert run(parse_simulation_args([*args, "--run-dir", str(run_dir), "--cache-dir", str(cache)], env={})) == 0
    return dict(checkpoint.load_tensors(run_dir / "final_model.safetensors").tensors)


def test_a_simulation_runs_your_own_training_evaluation_and_metric_summary(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    simulate_here(tmp_path / "run", tmp_path / "cache", "--model", "examples.digits:model", "--weights", "none", "--data", "examples.digits:data",
              "--train", "all", "--rounds", "2", "--virtual-clients", "3", "--lr", "0.01", "--holdout-fraction", "0.2", "--client-eval-every", "1",
              "--train-fn", "examples.custom_training:train", "--evaluate-fn", "examples.custom_training:evaluate",
              "--metric-aggregation", "examples.custom_training:worst_client")
    records = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["client_metrics"]["clients_evaluated"] for r in records[1:]] == [3, 3]
    assert records[-1]["test_accuracy"] > 0.8 > records[0]["test_accuracy"]  # the clients' Adam loop trained it


def test_record_level_dp_and_personal_heads_run_in_a_simulation_as_on_real_clients(tmp_path: Path) -> None:
    """The simulator runs the real client's round (client/local_round.py): DP-SGD spends each virtual client's own ledger
    (kept on disk, so it lasts across rounds and a resume), and personal heads are fitted and reported."""
    from fedtl.simulation.app import run
    from fedtl.simulation.config import parse_simulation_args

    run_dir = tmp_path / "run"
    cfg = parse_simulation_args(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:160", "--rounds", "2",
                                 "--virtual-clients", "3", "--batch-size", "16", "--lr", "0.05", "--dp-clip", "1.0", "--dp-epsilon", "4",
                                 "--personal-epochs", "1", "--holdout-fraction", "0.25", "--client-eval-every", "1",
                                 "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"), "--eval-every", "0"], env={})
    assert run(cfg) == 0
    records = [r for line in (run_dir / "rounds.jsonl").read_text().splitlines() if (r := json.loads(line))["round"]]
    ledgers = sorted((run_dir / "virtual-clients").glob("*/privacy_ledger.json"))
    assert len(ledgers) == 3 and all(len(json.loads(p.read_text())["steps"]) == 2 for p in ledgers)  # two DP-SGD rounds each
    assert 0 < records[0]["record_epsilon"] < records[1]["record_epsilon"] <= 4 + 1e-6
    assert all(0 <= r["client_personal_accuracy"] <= 1 for r in records)
