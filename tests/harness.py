"""Real server and client processes on 127.0.0.1 for end-to-end tests: start, watch logs, kill, restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedtl.common import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
PROCESSES_ALLOWED = True  # conftest.py sets it per test: only tests marked `multiprocess` may start processes here


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        if not PROCESSES_ALLOWED:
            raise AssertionError("this test starts processes: mark it @pytest.mark.multiprocess (the fast tier leaves those out)")
        self.log_path = log
        self._log = log.open("w")
        self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})}, stdout=self._log,
                                      stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.log_path.name} did not exit within {timeout}s; log tail:\n{self.log[-4000:]}") from None

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.popen.poll() is not None and text not in self.log:
                raise AssertionError(f"{self.log_path.name} exited ({self.popen.returncode}) before printing {text!r}:\n{self.log[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.log_path.name} did not print {text!r} within {timeout}s:\n{self.log[-4000:]}")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.kill()
        self._log.close()


class Federation:
    """One server (restartable) and any number of clients, each with its own log in `folder`."""

    def __init__(self, folder: Path, server_args: list[str]) -> None:
        self.folder = folder
        self.run_dir = folder / "run"
        self.server_args = server_args
        self.server: Proc | None = None
        self.port = 0
        self.clients: dict[str, Proc] = {}
        self._starts = 0

    def server_argv(self, address: str, extra: list[str] | None = None) -> list[str]:
        args = ["--address", address, "--run-dir", str(self.run_dir), *self.server_args, *(extra or [])]
        if "--cache-dir" not in args:  # this federation's own feature cache: tests in parallel never write one folder
            args += ["--cache-dir", str(self.folder / "feature-cache")]
        return args

    def restart_server(self, extra: list[str] | None = None) -> Proc:
        """Start the server again on the same port (clients reconnect to the address they know)."""
        return self.start_server(extra, address=f"127.0.0.1:{self.port}")

    def start_server(self, extra: list[str] | None = None, address: str = "127.0.0.1:0") -> Proc:
        info = self.run_dir / "server.json"
        info.unlink(missing_ok=True)
        self._starts += 1
        self.server = Proc(["-m", "server", *self.server_argv(address, extra)], self.folder / f"server-{self._starts}.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.port = int(json.loads(info.read_text())["port"])
                return self.server
            except (OSError, ValueError, KeyError):
                if self.server.popen.poll() is not None:
                    raise AssertionError(f"server exited ({self.server.popen.returncode}):\n{self.server.log[-4000:]}") from None
                time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.server.log[-4000:]}")

    def start_client(self, name: str, extra: list[str] | None = None, server: str | None = None, env: dict[str, str] | None = None) -> Proc:
        args = ["-m", "client", "--server", server or f"127.0.0.1:{self.port}", "--name", name,
                "--workdir", str(self.folder / name), "--threads", "1", "--max-wait", "60", *(extra or [])]
        log = self.folder / f"{name}.log"
        if name in self.clients:
            self.clients[name].close()
            log = self.folder / f"{name}-{time.monotonic_ns()}.log"
        proc = Proc(args, log, env)
        self.clients[name] = proc
        return proc

    def rounds(self) -> list[dict]:
        path = self.run_dir / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def model(self, round_number: int) -> dict[str, torch.Tensor]:
        return dict(checkpoint.load_tensors(self.run_dir / "models" / f"round-{round_number:04d}.safetensors").tensors)

    def close(self) -> None:
        for proc in [*self.clients.values(), *([self.server] if self.server else [])]:
            proc.close()


def audited_updates(audit_dir: Path, round_number: int) -> list[tuple[dict[str, torch.Tensor], int, dict]]:
    """What each client sent for a round: (update tensors, num_examples, header info)."""
    found = []
    for meta in sorted(audit_dir.glob(f"*-round{round_number:04d}.json")):
        info = json.loads(meta.read_text())
        tensors = dict(checkpoint.load_tensors(meta.with_suffix(".safetensors")).tensors)
        found.append((tensors, info["num_examples"], info))
    return found
