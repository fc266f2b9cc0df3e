"""The run folder: one coordinator at a time, and an earlier run's results kept aside, never overwritten.

A lock file (an advisory `flock` held for the life of the process, so a killed server never leaves
a stale lock) stops a second coordinator from writing into the same folder. When a new run starts
where an earlier one left its checkpoint, round log or final model, those move into
`previous/<time>-<run id>/` first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

from fedtl.common.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK = ".lock"
RESULTS = ("checkpoint.safetensors", "rounds.jsonl", "final_model.safetensors", "models", "server.json", "privacy_ledger.json", "config.toml",
           "best_model.safetensors", "best_model.safetensors.pending")


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Hold the folder for this process; a second coordinator on it gets one line naming the first."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"--run-dir {self.path}: cannot create or write it ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--run-dir {self.path} is in use by another server (pid {holder}); "
                              "give this run its own --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def has_results(self, final_model: Path) -> bool:
        return any((self.path / name).exists() for name in RESULTS[:4]) or final_model.exists()

    def set_aside(self, final_model: Path, why: str) -> Path:
        """Move an earlier run's files into previous/<time>-<run id>/ so a new run overwrites nothing."""
        run_id = "run"
        try:
            run_id = json.loads((self.path / "server.json").read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            pass
        target = self.path / "previous" / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"
        target.mkdir(parents=True, exist_ok=True)
        for item in [*(self.path / name for name in RESULTS), final_model]:
            if item.exists():
                shutil.move(str(item), str(target / item.name))
        logger.warning("%s: the earlier run's checkpoint, round log and models are kept in %s", why, target)
        return target
