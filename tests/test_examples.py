"""Every example in examples/ runs as a real federation (server and clients in threads of this process, over gRPC on
127.0.0.1: tests/inprocess_federation.py), plus the Python API's run():
a custom model on an image folder with its own class names, a non-image model on scikit-learn's digits, and a custom
aggregation rule whose result is checked against the updates the clients sent. Clients refuse a coordinator-named
model plugin unless their operator allowed it."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import audited_updates
from inprocess_federation import InProcessFederation as Federation
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--join-grace", "0", "--finish-grace", "5", "--wait-timeout", "120", "--batch-size", "32"]


def _image_folder(root: Path, classes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 10)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.zeros((32, 32, 3), dtype=np.uint8)
                base[:, :, index % 3] = 200  # each class its own colour, plus noise
                noisy = np.clip(base + rng.integers(0, 56, size=base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"{i:03d}.png")
    return root


def test_a_custom_model_on_an_image_folder_with_its_own_class_names(tmp_path: Path) -> None:
    from fedtl.common.models import load_trained

    data = str(_image_folder(tmp_path / "bugs", ["ant", "bee", "wasp"]))
    fed = Federation(tmp_path, ["--model", "examples.custom_model:build", "--data", data, "--train", "head",
                                "--rounds", "3", "--min-clients", "2", "--lr", "0.1", "--local-epochs", "20",
                                "--round-config", "examples.schedule:step_decay", *QUICK])
    try:
        fed.start_server()
        refused = fed.start_client("outsider", ["--data", data, "--max-wait", "5"])  # no --allow-plugin: it must not run the code
        assert refused.wait(60) != 0
        assert "--allow-plugin examples" in refused.log and "Traceback" not in refused.log, refused.log[-2000:]
        for name in ("a", "b"):
            fed.start_client(name, ["--data", data, "--allow-plugin", "examples"])
        assert fed.server.wait(180) == 0, fed.server.log[-3000:]
        client_log = fed.clients["a"].log
    finally:
        fed.close()
    assert "round 2: training (fedavg, 20 local epoch(s), batch 32, lr 0.1)" in client_log  # the schedule (examples/schedule.py)
    assert "round 3: training (fedavg, 20 local epoch(s), batch 32, lr 0.05)" in client_log
    records = fed.rounds()
    assert [r["round"] for r in records] == [0, 1, 2, 3] and records[-1]["test_accuracy"] > 0.9, records[-1]
    assert records[-1]["test_loss"] < 0.75 * records[0]["test_loss"]  # it learned (the classes differ by colour)
    module, info = load_trained(fed.run_dir / "final_model.safetensors")
    assert info.class_names == ("ant", "bee", "wasp") and info.model == "examples.custom_model:build"
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_a_non_image_model_on_scikit_learns_digits(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    fed = Federation(tmp_path, ["--model", "examples.digits:model", "--data", "examples.digits:data",
                                "--train", "all", "--rounds", "4", "--min-clients", "2", "--lr", "0.1", *QUICK])
    try:
        fed.start_server()
        for name in ("a", "b"):
            fed.start_client(name, ["--data", "examples.digits:data", "--allow-plugin", "examples.digits"])
        assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    records = fed.rounds()
    assert records[0]["test_accuracy"] < 0.3 < 0.8 < records[-1]["test_accuracy"], [r["test_accuracy"] for r in records]


def test_a_custom_rule_in_under_forty_lines_aggregates_as_it_says(tmp_path: Path) -> None:
    source = (ROOT / "examples" / "uniform_mean.py").read_text()
    assert len(source.splitlines()) < 40
    fed = Federation(tmp_path, ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:200", "--rounds", "1",
                                "--min-clients", "2", "--aggregation", "examples.uniform_mean:UniformMean", "--keep-round-models", *QUICK])
    audit = tmp_path / "audit"
    try:
        fed.start_server()
        for name, n in (("small", 60), ("large", 300)):  # different example counts: weighted and uniform means differ
            fed.start_client(name, ["--partition", "none", "--data", f"synthetic:{n}", "--audit-dir", str(audit)])
        assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    updates = audited_updates(audit, 1)
    assert sorted(n for _, n, _ in updates) == [60, 300]
    before, after = fed.model(0), fed.model(1)
    for name in updates[0][0]:
        if not before[name].is_floating_point():
            continue
        uniform = sum(u[name].double() for u, _, _ in updates) / len(updates)
        assert torch.allclose((after[name] - before[name]).double(), uniform, atol=1e-5), name


def test_the_python_api_runs_a_coordinator_and_returns_its_history(tmp_path: Path) -> None:
    from fedtl.api import History, run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fed = Federation(tmp_path, [])  # only its clients: the coordinator is run() in this thread, as a notebook would
    try:
        clients = [fed.start_client(name, ["--data", "synthetic:200", "--max-wait", "120"], server=f"127.0.0.1:{port}") for name in ("a", "b")]
        history = run(["--address", f"127.0.0.1:{port}"], model="tiny_cnn", weights="none", data="synthetic:200", rounds=2,
                      min_clients=2, run_dir=tmp_path / "run", join_grace=0, finish_grace=5)
        assert all(client.wait(60) == 0 for client in clients)
    finally:
        fed.close()
    assert [r for r, _ in history.metric("test_accuracy")] == [0, 1, 2] and history.bytes_moved > 0
    assert math.isfinite(history.final_accuracy) and history.model_path.exists()
    assert History.load(tmp_path / "run").rounds == history.rounds


def test_a_round_schedule_is_checked_for_every_round_at_start(tmp_path: Path) -> None:
    from fedtl.common.errors import ConfigError
    from fedtl.server.config import parse_args

    base = ["--run-dir", str(tmp_path), "--data", "synthetic:60", "--rounds", "5", "--lr", "0.1"]
    cfg = parse_args([*base, "--round-config", "examples.schedule:step_decay"], env={})
    assert [cfg.train_for(n).lr for n in range(1, 6)] == [0.1, 0.1, 0.05, 0.05, 0.025] and cfg.train_for(1).batch_size == cfg.train.batch_size
    with pytest.raises(ConfigError, match="a schedule may change"):
        parse_args([*base, "--round-config", "tests.test_examples:_changes_the_seed"], env={})
    with pytest.raises(ConfigError, match="cannot import"):
        parse_args([*base, "--round-config", "no_such_module:f"], env={})


def _changes_the_seed(round_number: int, recipe) -> dict:  # type: ignore[no-untyped-def]
    return {"seed": round_number}


def test_your_own_training_evaluation_and_metric_summary_run_on_clients_that_allow_them(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    own = ["--train-fn", "examples.custom_training:train", "--evaluate-fn", "examples.custom_training:evaluate",
           "--metric-aggregation", "examples.custom_training:worst_client", "--client-eval-every", "1", "--holdout-fraction", "0.2"]
    fed = Federation(tmp_path, ["--model", "examples.digits:model", "--data", "examples.digits:data", "--train", "all",
                                "--rounds", "3", "--min-clients", "2", "--min-fit-clients", "1", "--num-partitions", "3", "--lr", "0.01", *own, *QUICK])
    try:
        fed.start_server()
        # the outsider allows the model's module but not the training code: it refuses its first task and leaves
        refused = fed.start_client("outsider", ["--data", "examples.digits:data", "--allow-plugin", "examples.digits", "--max-wait", "5"])
        fed.start_client("a", ["--data", "examples.digits:data", "--allow-plugin", "examples"])
        assert refused.wait(120) != 0
        assert "training function is the plugin examples.custom_training:train" in refused.log, refused.log[-2000:]
        fed.start_client("b", ["--data", "examples.digits:data", "--allow-plugin", "examples"])
        assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    records = fed.rounds()[1:]
    assert [r["answered"] for r in records] == [1, 2, 2]  # round 1 went on without the outsider
    for r in records:  # the clients' own loss and accuracy, and the coordinator's own summary of them
        assert r["client_metrics"]["clients_evaluated"] == r["answered"]
        assert 0 <= r["client_metrics"]["worst_eval_accuracy"] <= r["client_eval_accuracy"]
        assert r["train_loss"] > 0 and r["clients_cached"] == 0
    assert records[-1]["test_accuracy"] > 0.8 > fed.rounds()[0]["test_accuracy"]  # Adam trained it
    from fedtl.api import History

    assert [v for _, v in History.load(fed.run_dir).metric("worst_eval_accuracy")] == [r["client_metrics"]["worst_eval_accuracy"] for r in records]


def test_the_python_api_logs_like_the_command_and_raises_one_line_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = ("import sys\nfrom fedtl.api import run\nkind = sys.argv[1]\n"
              "settings = dict(model='tiny_cnn', data='synthetic:50', rounds=1, min_clients=1, run_dir=sys.argv[2], wait_timeout=1)\n"
              "if kind == 'typo':\n    settings['epochs'] = 2\n"
              "try:\n    run(['--address', '127.0.0.1:0'], **settings)\n"
              "except Exception as exc:\n    import traceback\n    print('FRAMES', len(traceback.extract_tb(exc.__traceback__)), type(exc).__name__, exc)\n")
    # two frames: the caller's line and run()'s raise, nothing of the internals
    typo = subprocess.run([sys.executable, "-c", script, "typo", str(tmp_path / "a")], capture_output=True, text=True, timeout=120, cwd=root)
    assert "FRAMES 2 ConfigError unrecognized arguments: --epochs 2 (did you mean --local-epochs?)" in typo.stdout, typo.stdout + typo.stderr
    assert "usage:" not in typo.stderr, "no usage dump, no exit: the caller's program goes on"
    alone = subprocess.run([sys.executable, "-c", script, "wait", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=root)
    assert "FRAMES 2 RuntimeError the federation ended with exit status 2" in alone.stdout, alone.stdout + alone.stderr
    assert "server fedtl" in alone.stderr and "waiting for" in alone.stderr, "round lines as the command shows them"
