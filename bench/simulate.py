"""The simulation engine (python -m simulation) on real CIFAR-10: start-up, throughput and the showcase.

1. start: process start to round 1 opening, with warm caches, against `python -c "import torch, torchvision, timm"`
   (the floor any Python process that trains pays) measured in the same run;
2. throughput: 1,000 head-only virtual clients a round (EfficientNet-Lite0 head on cached features, 50 examples
   each), rounds 2-5; the same clients trained one by one (--vectorise off) in the same run for the ratio;
3. showcase: all 50,000 training images over 100 virtual clients (Dirichlet alpha = 0.1), 10 a round, 100 rounds,
   with and without personal heads, from a cold feature cache (the one-off build included in the time).

`python -m bench.simulate [--data ../shared/datasets/cifar10-jpeg.tar.gz]`
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.procs import machine, summary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
OUT = ROOT / "bench" / "results"
LITE0 = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64", "--train", "head", "--head-init", "none", "--batch-size", "64",
         "--lr", "0.03", "--momentum", "0.9", "--weight-decay", "5e-4", "--local-epochs", "1", "--seed", "0"]


def simulate(run_dir: Path, cache: Path, data: str, *args: str) -> tuple[float, list[dict], str]:
    """Seconds from process start to exit, the round records, the log."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "simulation", *LITE0, "--data", data, "--run-dir", str(run_dir), "--cache-dir", str(cache),
                           *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return seconds, records, proc.stderr


def _stamp(log: str, pattern: str) -> float:
    """Seconds since midnight of the first log line matching `pattern` (log lines begin HH:MM:SS.mmm)."""
    for line in log.splitlines():
        if re.search(pattern, line):
            h, m, s = line[:12].split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
    raise RuntimeError(f"no line matches {pattern!r}")


def start_up(work: Path, cache: Path, data: str) -> dict:
    floor = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, torchvision, timm"], check=True)
        floor.append(time.perf_counter() - t)
    runs = []
    simulate(work / "warm", cache, data, "--virtual-clients", "100", "--rounds", "1")  # fills the caches
    for i in range(3):
        wall = datetime.now()
        began = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
        _, _, log = simulate(work / f"start{i}", cache, data, "--virtual-clients", "100", "--rounds", "1")
        runs.append({"to_round_1": _stamp(log, r"round 1/1: selected") - began, "ready": _stamp(log, "simulation ready") - began})
    return {"python_imports": summary(floor), "to_round_1": summary([r["to_round_1"] for r in runs]),
            "to_ready": summary([r["ready"] for r in runs])}


def throughput(work: Path, cache: Path, data: str) -> dict:
    out = {}
    for mode in ("auto", "off"):
        _, records, _ = simulate(work / f"k-{mode}", cache, data, "--virtual-clients", "1000", "--clients-per-round", "1000", "--rounds", "5",
                                 "--vectorise", mode, "--lr", "0.01")
        rounds = [r for r in records if r["round"] >= 2]
        out[mode] = {"seconds": summary([r["seconds"] for r in rounds]), "answered": [r["answered"] for r in rounds],
                     "examples": rounds[0]["examples"], "bytes_up": rounds[0]["bytes_up"],
                     "phases": {k: summary([r["phases"][k] for r in rounds]) for k in rounds[0]["phases"]}}
    out["vectorised_speedup"] = out["off"]["seconds"]["median"] / out["auto"]["seconds"]["median"]
    return out


def showcase(work: Path, data: str) -> dict:
    cold = work / "cold-cache"
    out = {}
    common = ["--virtual-clients", "100", "--clients-per-round", "10", "--rounds", "100", "--partition-scheme", "dirichlet", "--alpha", "0.1",
              "--holdout-fraction", "0.2", "--client-eval-every", "10"]
    for name, extra in (("global", []), ("personal", ["--personal-epochs", "1"])):
        shutil.rmtree(cold, ignore_errors=True)
        seconds, records, _ = simulate(work / f"show-{name}", cold, data, *common, *extra)
        out[name] = {"seconds": seconds, "rounds": [{k: r.get(k) for k in ("round", "test_accuracy", "client_eval_accuracy",
                                                                           "client_personal_accuracy", "seconds", "examples")} for r in records]}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (("global", "global model, test split"), ("personal", "global model, test split (personal-heads run)")):
        rs = result["showcase"][name]["rounds"]
        ax.plot([r["round"] for r in rs], [100 * r["test_accuracy"] for r in rs], label=label)
    rs = [r for r in result["showcase"]["personal"]["rounds"] if r["client_personal_accuracy"] is not None]
    ax.plot([r["round"] for r in rs], [100 * r["client_personal_accuracy"] for r in rs], "o-", label="personal heads, clients' held-out data")
    rs = [r for r in result["showcase"]["personal"]["rounds"] if r["client_eval_accuracy"] is not None]
    ax.plot([r["round"] for r in rs], [100 * r["client_eval_accuracy"] for r in rs], "s--", label="global model, clients' held-out data")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("100 virtual clients, Dirichlet α = 0.1, 10 a round (EfficientNet-Lite0 head)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.simulate")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", type=Path, default=OUT / "simulate.json")
    a = p.parse_args()
    if not Path(a.data).exists():
        print(f"need the CIFAR-10 JPEG archive: --data /path/to/cifar10-jpeg.tar.gz (not found: {a.data})", file=sys.stderr)
        return 2
    result: dict = {"machine": machine(), "measured": datetime.now().isoformat(timespec="minutes")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["showcase"] = showcase(work, a.data)
        for name in ("global", "personal"):
            s = result["showcase"][name]
            last = s["rounds"][-1]
            print(f"showcase ({name}): {s['seconds']:.0f} s for 100 rounds from a cold cache; final test accuracy {100 * last['test_accuracy']:.2f}%",
                  flush=True)
        cache = work / "cache"
        result["start"] = start_up(work, cache, a.data)
        print(f"start to round 1 (warm caches): {result['start']['to_round_1']['median']:.2f} s; python imports alone "
              f"{result['start']['python_imports']['median']:.2f} s", flush=True)
        result["throughput"] = throughput(work, cache, a.data)
        t = result["throughput"]
        print(f"1,000 virtual clients a round: {t['auto']['seconds']['median']:.2f} s vectorised, {t['off']['seconds']['median']:.2f} s one by one "
              f"({t['vectorised_speedup']:.1f}x)", flush=True)
    a.out.write_text(json.dumps(result, indent=1))
    plot(result, a.out.with_name("simulate_showcase.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
