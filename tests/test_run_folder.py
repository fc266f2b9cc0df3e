"""The run folder: one coordinator at a time; a checkpoint resumes only the run whose settings made it; a new
run never overwrites an earlier one's results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtl.common.errors import ConfigError
from fedtl.server.app import build
from fedtl.server.config import parse_args

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:200", "--join-grace", "0", "--finish-grace", "3",
        "--min-clients", "1", "--rounds", "2", "--lr", "0.05", "--eval-every", "0"]


def _completed_run(federation) -> object:  # type: ignore[no-untyped-def]
    """A finished run, its server and client in threads of this process (tests/inprocess_federation.py)."""
    fed = federation(TINY)
    fed.start_server()
    fed.start_client("c0", ["--data", "synthetic:200"])
    assert fed.server.wait(120) == 0, fed.server.log[-2000:]
    return fed


def test_a_second_server_on_the_same_run_folder_is_refused(tmp_path: Path) -> None:
    args = [*TINY, "--run-dir", str(tmp_path / "run"), "--address", "127.0.0.1:0"]
    first = build(parse_args(args, env={}))
    try:
        with pytest.raises(ConfigError, match=r"is in use by another server \(pid \d+\)"):
            build(parse_args(args, env={}))
    finally:
        assert first.run_folder is not None
        first.run_folder.release()
    build(parse_args(args, env={})).run_folder.release()  # free again once the first one let go


def test_a_checkpoint_resumes_only_the_run_whose_settings_made_it(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = _completed_run(inprocess_federation)
    changed = [*TINY, "--rounds", "3", "--lr", "0.1", "--run-dir", str(fed.run_dir), "--address", "127.0.0.1:0"]
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.05 -> 0\.1"):
        build(parse_args(changed, env={}))
    other_data = [*TINY, "--rounds", "3", "--data", "synthetic:1200", "--run-dir", str(fed.run_dir), "--address", "127.0.0.1:0"]
    with pytest.raises(ConfigError, match="test_data"):
        build(parse_args(other_data, env={}))
    extended = build(parse_args([*TINY, "--rounds", "3", "--run-dir", str(fed.run_dir), "--address", "127.0.0.1:0"], env={}))
    assert extended.checkpoints.completed == 2  # the same settings with more rounds continue the run
    extended.run_folder.release()
    same = build(parse_args([*TINY, "--rounds", "3", "--resume", "if-same", "--run-dir", str(fed.run_dir), "--address", "127.0.0.1:0"], env={}))
    assert same.checkpoints.completed == 2, "if-same continues a run of the same settings"
    same.run_folder.release()
    fresh = build(parse_args([*changed, "--resume", "if-same"], env={}))  # what docker compose does: a second `up` with other settings
    fresh.run_folder.release()
    assert fresh.checkpoints.completed == 0 and len(list((fed.run_dir / "previous").iterdir())) == 1, "a new run; the old one kept"


def test_rerunning_a_completed_run_starts_a_new_one_and_keeps_the_old(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed = _completed_run(inprocess_federation)
    first_model = (fed.run_dir / "final_model.safetensors").read_bytes()
    again = build(parse_args([*TINY, "--run-dir", str(fed.run_dir), "--address", "127.0.0.1:0"], env={}))
    again.run_folder.release()
    assert again.checkpoints.completed == 0
    (kept,) = (fed.run_dir / "previous").iterdir()
    assert (kept / "final_model.safetensors").read_bytes() == first_model
    assert [json.loads(line)["round"] for line in (kept / "rounds.jsonl").read_text().splitlines()] == [1, 2]
    assert not (fed.run_dir / "final_model.safetensors").exists() and not (fed.run_dir / "rounds.jsonl").exists()
