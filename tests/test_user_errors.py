"""Every path a user types, wrong in every usual way, gives one line that names the flag, never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import ENV, ROOT
from PIL import Image

from fedtl.common import checkpoint
from fedtl.server.__main__ import main as server_main

BASE = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", "--address", "127.0.0.1:0", "--rounds", "1"]


def _folder_tree(root: Path, broken: bool = False) -> Path:
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / split / name / "0.png")
    if broken:
        (root / "test" / "a" / "1.png").write_bytes(b"not an image")
    return root


def _archive(tmp: Path) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(_folder_tree(tmp / "tree"), arcname="data")
    good = tmp / "good.tar.gz"
    good.write_bytes(buffer.getvalue())
    return good


def cases(tmp: Path) -> list[tuple[list[str], str]]:
    archive = _archive(tmp)
    (tmp / "truncated.tar.gz").write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])
    (tmp / "random.tar.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "a-file").write_text("x")
    (tmp / "folder").mkdir()
    (tmp / "tokens.bin").write_bytes(b"\xff\xfe\x00binary")
    (tmp / "cert.pem").write_text("hello")
    (tmp / "key.pem").write_text("hello")
    checkpoint.save_tensors(tmp / "other-model.safetensors", {"conv1.0.weight": torch.zeros(5, 5, 5, 5)})
    return [
        (["--data", str(tmp / "truncated.tar.gz")], "--data"),
        (["--data", str(tmp / "random.tar.gz")], "--data"),
        (["--data", str(_folder_tree(tmp / "broken", broken=True))], "cannot be read"),
        (["--weights", str(tmp / "other-model.safetensors")], "--weights"),
        (["--run-dir", str(tmp / "a-file")], "--run-dir"),
        (["--data-cache", str(tmp / "a-file")], "--data-cache"),
        (["--output", str(tmp / "folder")], "--output"),
        (["--tokens-file", str(tmp / "tokens.bin")], "--tokens-file"),
        (["--tls-cert", str(tmp / "cert.pem"), "--tls-key", str(tmp / "key.pem")], "--tls-cert"),
    ]


def test_bad_server_inputs_end_in_one_line_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra, says in cases(tmp_path):
        run_dir = [] if "--run-dir" in extra else ["--run-dir", str(tmp_path / f"run-{len(says)}-{extra[1][-12:]}")]
        code = server_main([*BASE, "--data-cache", str(tmp_path / "cache"), *run_dir, *extra])
        out = capsys.readouterr()
        text = out.out + out.err
        assert code == 2, (extra, text[-2000:])
        assert "Traceback" not in text and says in text, (extra, text[-2000:])


@pytest.mark.multiprocess  # what `python -m client` itself prints
def test_bad_client_inputs_end_in_one_line_naming_the_flag(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    (tmp_path / "truncated.tar.gz").write_bytes(archive.read_bytes()[:100])
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "ca.pem").write_text("not a certificate")
    for extra, says in [(["--data", str(tmp_path / "truncated.tar.gz")], "--data"), (["--workdir", str(tmp_path / "a-file")], "--workdir"),
                        (["--ca-cert", str(tmp_path / "ca.pem")], "--ca-cert")]:
        done = subprocess.run([sys.executable, "-m", "client", "--name", "c", "--data-cache", str(tmp_path / "cache"), "--max-wait", "5",
                               *(["--data", "synthetic:100"] if "--data" not in extra else []), *extra],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        text = done.stdout + done.stderr
        assert done.returncode == 2 and "Traceback" not in text and says in text, (extra, text[-2000:])
