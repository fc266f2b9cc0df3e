"""Round overhead of this tree against another checkout, measured in one run, alternating, so both see the same machine.

`git worktree add /tmp/base <commit>` makes the other checkout; then
`python -m bench.compare --baseline /tmp/base --model resnet18 --clients 8 --repeats 3`.
Each repeat runs bench/round_overhead.py once per tree (baseline first, then this one) and the
result is the ratio of the medians of the per-run medians: a figure for a change, not for a machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procs import ROOT, machine


def one_run(tree: Path, model: str, clients: int, rounds: int, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "bench.round_overhead", "--models", model, "--clients", str(clients), "--rounds", str(rounds),
                    "--out", str(out)], cwd=tree, check=True, stdout=subprocess.DEVNULL)
    run = json.loads(out.read_text())["runs"][0]
    return {"median": run["seconds"]["median"], "floor": run["raw_grpc_floor_seconds"], "rss_mb": run["server_peak_rss_mb"]}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare")
    p.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository (e.g. a git worktree)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/compare.json"))
    a = p.parse_args()
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for name, tree in (("baseline", a.baseline.resolve()), ("this", ROOT)):
                result = one_run(tree, a.model, a.clients, a.rounds, Path(tmp) / f"{name}-{i}.json")
                runs[name].append(result)
                print(f"repeat {i + 1}/{a.repeats} {name}: median {result['median']:.3f} s per round "
                      f"(raw-gRPC floor {result['floor']:.3f} s)", flush=True)
    base = statistics.median(r["median"] for r in runs["baseline"])
    this = statistics.median(r["median"] for r in runs["this"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=a.baseline, capture_output=True, text=True).stdout.strip()
    report = {"model": a.model, "clients": a.clients, "baseline_commit": commit, "baseline_seconds": base, "this_seconds": this,
              "ratio": this / base, "runs": runs, "machine": machine()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{a.model} x {a.clients}: baseline ({commit}) {base:.3f} s, this tree {this:.3f} s per round -> {this / base:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
