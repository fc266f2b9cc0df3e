"""scripts/local_federation.py, as a new user runs it: a demo whose clients all fail does not wait forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import ENV, ROOT

pytestmark = pytest.mark.multiprocess


def test_the_launcher_fails_when_every_client_has_failed(tmp_path: Path) -> None:
    server = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", "--rounds", "1", "--eval-every", "0"]
    clients = ["--data", str(tmp_path / "no-such-dataset")]
    done = subprocess.run([sys.executable, "-m", "scripts.local_federation", "--clients", "2", "--run-dir", str(tmp_path / "run"),
                           "--", *server, "--", *clients], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "all 2 clients exited with errors" in done.stderr, done.stderr[-3000:]
    assert "no-such-dataset" in done.stdout + done.stderr  # the clients said why
