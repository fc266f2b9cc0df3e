"""Benchmark plumbing: machine description, server/client processes, peak-RSS sampling."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import grpc
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1), "python": platform.python_version(),
        "torch": torch.__version__, "grpcio": grpc.__version__, "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, and the interquartile range when there are enough samples)."""
    values = sorted(values)
    out = {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        out["q1"], out["q3"] = q[0], q[2]
    return out


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._file = log.open("w")
        self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})}, stdout=self._file,
                                      stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise RuntimeError(f"{self.log} did not finish in {timeout}s:\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._file.close()


class PeakRss:
    """Samples a process's RSS; VmHWM gives the true peak even between samples."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self.peak_kb = 0
        self.threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if "VmRSS" not in fields:  # the process is exiting
                return
            self.samples.append(int(fields["VmRSS"].split()[0]))
            self.peak_kb = max(self.peak_kb, int(fields["VmHWM"].split()[0]))
            self.threads = max(self.threads, int(fields["Threads"]))
            time.sleep(self.every)


def start_server(run_dir: Path, args: list[str], log: Path) -> tuple[Process, int]:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = run_dir / "server.json"
    info.unlink(missing_ok=True)
    server = Process(["-m", "server", "--address", "127.0.0.1:0", "--run-dir", str(run_dir), "--resume", "never", *args], log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            return server, int(json.loads(info.read_text())["port"])
        except (OSError, ValueError, KeyError):
            if server.popen.poll() is not None:
                raise RuntimeError(f"server failed:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def run_federation(run_dir: Path, server_args: list[str], clients: dict[str, list[str]], work: Path, label: str,
                   timeout: float = 3600) -> PeakRss:
    """The server, then one client process per entry (name -> its flags; --server and --name are added), until the server
    exits; every process is stopped whatever happens. Logs: WORK/LABEL-server.log, WORK/LABEL-NAME.log. Returns the
    server's memory samples."""
    server, port = start_server(run_dir, server_args, work / f"{label}-server.log")
    procs = []
    try:
        with PeakRss(server.popen.pid) as rss:
            for name, flags in clients.items():
                procs.append(Process(["-m", "client", "--server", f"127.0.0.1:{port}", "--name", name, *flags], work / f"{label}-{name}.log"))
            code = server.wait(timeout)
        if code != 0:
            raise RuntimeError(f"{label}: server exited {code}:\n{(work / f'{label}-server.log').read_text()[-3000:]}")
    finally:
        for p in procs:
            p.stop()
        server.stop()
    return rss


def rounds(run_dir: Path) -> list[dict]:
    path = run_dir / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
