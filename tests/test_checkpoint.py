from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedtl.common import checkpoint


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    t = {"w": torch.randn(3, 4), "n": torch.tensor(2)}
    size = checkpoint.save_tensors(tmp_path / "m.safetensors", t, {"round": "4"})
    assert size == (tmp_path / "m.safetensors").stat().st_size
    back = checkpoint.load_tensors(tmp_path / "m.safetensors")
    assert back.metadata == {"round": "4"} and all(torch.equal(back.tensors[k], v) for k, v in t.items())


def test_a_failed_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.bin"
    checkpoint.write_bytes_atomic(path, b"old")

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        checkpoint.write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.bin"]  # no temp file left behind
