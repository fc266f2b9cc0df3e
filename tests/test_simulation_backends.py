"""The simulation's worker backends: a process pool and Ray train the same clients to the same model as this process.
Their workers are processes of their own, so these simulations run as `python -m simulation` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_simulate import simulate_here

from fedtl.common import checkpoint
from fedtl.common.models import build_network

ROOT = Path(__file__).resolve().parents[1]


def _simulate(run_dir: Path, cache: Path, *args: str) -> dict[str, torch.Tensor]:
    """`python -m simulation ARGS` as a process: a backend whose workers are processes of their own (a pool, Ray)."""
    run = subprocess.run([sys.executable, "-m", "simulation", *args, "--run-dir", str(run_dir), "--cache-dir", str(cache)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(checkpoint.load_tensors(run_dir / "final_model.safetensors").tensors)


FULL = ["--model", "mobilenet_v3_small", "--weights", "none", "--data", "synthetic:120", "--train", "all", "--rounds", "2",
        "--virtual-clients", "4", "--clients-per-round", "3", "--batch-size", "16", "--lr", "0.01", "--max-steps", "2", "--seed", "5"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_process_pool_trains_full_networks_as_this_process_would(tmp_path: Path) -> None:
    local = simulate_here(tmp_path / "local", tmp_path / "cache", *FULL)
    pooled = _simulate(tmp_path / "pool", tmp_path / "cache", *FULL, "--backend", "process", "--workers", "2", "--clients-per-task", "1")
    moved = 0
    for name, tensor in local.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, pooled[name], atol=1e-5, rtol=1e-4), (name, (tensor - pooled[name]).abs().max())
        else:
            assert torch.equal(tensor, pooled[name]), name
    initial = build_network("mobilenet_v3_small", 10, "none", seed=0).module.state_dict()
    moved = sum(int(not torch.allclose(local[n].float(), initial[n].float())) for n in local)
    assert moved > 100  # every layer trained (--train all), not just a head


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ray_workers_train_the_same_clients_to_the_same_model(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("timm")
    args = ["--model", "efficientnet_lite0", "--weights", "none", "--data", "synthetic:400", "--train", "head", "--rounds", "3",
            "--virtual-clients", "20", "--clients-per-round", "8", "--lr", "0.1", "--seed", "2", "--partition-scheme", "dirichlet"]
    local = simulate_here(tmp_path / "local", tmp_path / "cache", *args)
    on_ray = _simulate(tmp_path / "ray", tmp_path / "cache", *args, "--backend", "ray", "--workers", "2", "--clients-per-task", "3")
    for name, tensor in local.items():
        assert torch.allclose(tensor.float(), on_ray[name].float(), atol=1e-6), (name, (tensor - on_ray[name]).abs().max())
    log = (tmp_path / "ray" / "rounds.jsonl").read_text().splitlines()
    # round 1 pools every client's head statistics (--head-init auto with a frozen backbone), then 8 a round train
    assert [(json.loads(line)["answered"], json.loads(line)["statistics"]) for line in log[1:]] == [(20, "ridge"), (8, ""), (8, "")]
