"""Time to round 1: a job submitted to a standing coordinator whose sites are connected, against a fresh launch of the
same federation (server and client processes started, imports, data, joins), measured in one run on one machine.

    python -m bench.standing [--model tiny_cnn --weights none --data synthetic:600] [--out bench/results/standing.json]
    python -m bench.standing --model efficientnet_lite0 --weights imagenet --data ../shared/datasets/cifar10-jpeg.tar.gz \
        --flags "--train head --image-size 128 --train-per-class 500 --test-per-class 200" --out bench/results/standing_demo.json

Both arms run the same job flags, with warm caches (a fresh launch is timed the second time); "round 1" is the server's
`round 1/N: selected` line, timed from `fedtl submit` (standing) or from starting the processes (fresh).
Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", FEDTL_OPERATOR_TOKEN="bench-operator-token-0123456789")
SELECTED = re.compile(r"round 1/\d+: selected")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(log: Path, pattern: re.Pattern[str], after: int = 0, timeout: float = 600) -> float:
    """When `pattern` first appears in `log` past character `after` (polled: this is a benchmark, not a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and pattern.search(log.read_text()[after:]):
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"{log} never printed {pattern.pattern!r}:\n{log.read_text()[-3000:]}")


def _address(run_dir: Path) -> str:
    while not (run_dir / "server.json").exists():
        time.sleep(0.01)
    return json.loads((run_dir / "server.json").read_text())["address"]


def measure(setup: list[str], job: list[str], sites: int, folder: Path) -> dict:
    client = ["--data-cache", str(folder / "cache")]
    data = setup[setup.index("--data") + 1]
    procs: list[subprocess.Popen] = []
    try:
        # fresh launch: every process starts now. Twice: the first fills the data and feature caches (an archive's
        # extraction), which a re-launch finds warm; the second is timed.
        fresh = 0.0
        for attempt in ("fresh-warmup", "fresh"):
            start = time.monotonic()
            procs.append(_start(["-m", "server", "--address", "127.0.0.1:0", "--run-dir", str(folder / attempt), *setup, *job],
                                folder / f"{attempt}.log"))
            address = _address(folder / attempt)
            for i in range(sites):
                procs.append(_start(["-m", "client", "--server", address, "--name", f"f{i}", "--data", data, *client],
                                    folder / f"{attempt}{i}.log"))
            fresh = _wait(folder / f"{attempt}.log", SELECTED) - start
            for p in procs:
                p.wait(600)
            procs.clear()
        # standing: the coordinator and its sites are up; a first job warms nothing the second needs but the processes
        server = _start(["-m", "server", "--standing", "--address", "127.0.0.1:0", "--run-dir", str(folder / "standing"), *setup],
                        folder / "standing.log")
        procs.append(server)
        address = _address(folder / "standing")
        for i in range(sites):
            procs.append(_start(["-m", "client", "--server", address, "--name", f"s{i}", "--data", data, *client], folder / f"s{i}.log"))
        times = []
        for _ in range(3):
            before = len((folder / "standing.log").read_text())
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "fedtl.cli", "submit", "--server", address, "--", *job], cwd=ROOT, env=ENV,
                                  capture_output=True, text=True, check=True)
            times.append(_wait(folder / "standing.log", SELECTED, before) - start)
            job_id = done.stdout.split()[-1]
            subprocess.run([sys.executable, "-m", "fedtl.cli", "logs", "--server", address, job_id, "-f"], cwd=ROOT, env=ENV,
                           capture_output=True, check=True)
        return {"fresh_launch_s": round(fresh, 2), "standing_submit_to_round1_s": [round(t, 2) for t in times],
                "ratio_fresh_over_second_job": round(fresh / times[1], 1)}
    finally:
        for p in procs:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_cnn")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--data", default="synthetic:600")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--flags", default="", help="more server flags for both arms, one string (e.g. the demo's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "standing.json")
    a = parser.parse_args()
    setup = ["--model", a.model, "--weights", a.weights, "--data", a.data, *shlex.split(a.flags)]
    job = ["--rounds", "2", "--min-clients", str(a.sites)]
    with tempfile.TemporaryDirectory() as scratch:
        recorded = [os.path.relpath(w, ROOT) if os.path.isabs(w) and os.path.exists(w) else w for w in setup]  # no machine's paths
        result = {"setup": recorded, "job": job, "sites": a.sites, "cpus": os.cpu_count(), **measure(setup, job, a.sites, Path(scratch))}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
