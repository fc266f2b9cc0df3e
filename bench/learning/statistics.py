"""Statistics rounds on real CIFAR-10 (closed-form heads, --head-init; pooled BatchNorm statistics, --batchnorm), through
the simulation engine (the real coordinator and the real client round; python -m simulation), against centralised
anchors on the same features.

`python -m bench.learning.statistics [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--only NAME ...]`

1. headline: all 50,000 training images over 100 virtual clients, Dirichlet alpha = 0.1, 10 a round, EfficientNet-Lite0
   (ImageNet weights, frozen) at --size px; the default (--head-init auto: a ridge head in round 1, then SGD rounds)
   against --head-init none (SGD from the random head, as before), and against one client holding all the data
   (the centralised ridge head and a centralised SGD head on the same features and budget);
2. skew: the issue's check, 20 clients, 5 a round, 2,000 training images, 64 px, 10 rounds, IID against Dirichlet 0.1,
   with --head-init auto and none, under the bench's recipe and under the simulator's defaults (skew_defaults);
3. sizes: the closed-form head's accuracy against input size on the same 5,000 / 2,000 images (one round each);
4. batchnorm: full fine-tuning (--train all, 64 px, 5,000 / 2,000 images, 4 clients, bench/learning's recipe) with
   FedAvg's averaged BatchNorm statistics against the last round pooling them, IID and Dirichlet 0.5.

Results: bench/learning/results/statistics.json and statistics.md. One-off feature builds are kept in the --cache
folder (the simulator's --cache-dir), so a re-run reads them back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import machine

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BASE = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--train", "head", "--batch-size", "64", "--lr", "0.003",
        "--momentum", "0.9", "--weight-decay", "5e-4", "--local-epochs", "1", "--seed", "0"]


def simulate(run_dir: Path, cache: Path, data: str, *args: str, recipe: tuple[str, ...] | list[str] = BASE) -> dict:
    """One simulation with the bench's recipe (or `recipe`) and `args`: its round records, wall time and feature build."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "simulation", *recipe, "--data", data, "--run-dir", str(run_dir), "--cache-dir", str(cache),
                           "--resume", "never", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    keep = ("round", "test_accuracy", "test_loss", "seconds", "examples", "answered", "bytes_up", "statistics", "client_eval_accuracy")
    return {"seconds": seconds, "args": list(args), "rounds": [{k: r.get(k) for k in keep} for r in records],
            "feature_build": _feature_seconds(proc.stderr)}


def _feature_seconds(log: str) -> float | None:
    for line in log.splitlines():
        if "feature cache built in" in line:
            return float(line.split("feature cache built in")[1].split("s")[0])
    return None


def headline(work: Path, cache: Path, data: str, size: int, rounds: int) -> dict:
    common = ["--image-size", str(size), "--test-per-class", "1000", "--rounds", str(rounds), "--head-ridge", "0.01"]
    fed = ["--virtual-clients", "100", "--clients-per-round", "10", "--partition-scheme", "dirichlet", "--alpha", "0.1"]
    central = ["--virtual-clients", "1", "--partition-scheme", "iid"]
    return {
        "ridge_then_sgd": simulate(work / "h-ridge", cache, data, *common, *fed),
        "sgd_only": simulate(work / "h-sgd", cache, data, *common, *fed, "--head-init", "none"),
        "central_ridge_then_sgd": simulate(work / "h-central-ridge", cache, data, *common, *central),
        "central_sgd": simulate(work / "h-central-sgd", cache, data, *common, *central, "--head-init", "none"),
    }


def skew(work: Path, cache: Path, data: str) -> dict:
    common = ["--image-size", "64", "--train-per-class", "200", "--test-per-class", "200", "--rounds", "10", "--virtual-clients", "20",
              "--clients-per-round", "5"]
    out = {}
    for init in ("auto", "none"):
        for split, extra in (("iid", ["--partition-scheme", "iid"]), ("dirichlet", ["--partition-scheme", "dirichlet", "--alpha", "0.1"])):
            out[f"{init}_{split}"] = simulate(work / f"s-{init}-{split}", cache, data, *common, *extra, "--head-init", init)
    return out


def skew_defaults(work: Path, cache: Path, data: str) -> dict:
    """The issue's own check: the simulator's default recipe (client lr 0.01, batch 32), no bench overrides."""
    common = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--train", "head", "--image-size", "64", "--train-per-class", "200",
              "--test-per-class", "200", "--rounds", "10", "--virtual-clients", "20", "--clients-per-round", "5"]
    out = {}
    for init in ("auto", "none"):
        for split, extra in (("iid", ["--partition-scheme", "iid"]), ("dirichlet", ["--partition-scheme", "dirichlet", "--alpha", "0.1"])):
            out[f"{init}_{split}"] = simulate(work / f"d-{init}-{split}", cache, data, *common, *extra, "--head-init", init, recipe=())
    return out


def sizes(work: Path, cache: Path, data: str) -> dict:
    out = {}
    for size in (64, 96, 128, 160, 224):
        out[str(size)] = simulate(work / f"z-{size}", cache, data, "--image-size", str(size), "--train-per-class", "500",
                                  "--test-per-class", "200", "--rounds", "1", "--virtual-clients", "10")
    return out


def batchnorm_runs(work: Path, cache: Path, data: str) -> dict:
    common = ["--image-size", "64", "--train", "all", "--train-per-class", "500", "--test-per-class", "200", "--virtual-clients", "4",
              "--lr", "0.03"]
    out = {}
    for split, extra in (("iid", ["--partition-scheme", "iid"]), ("dirichlet", ["--partition-scheme", "dirichlet", "--alpha", "0.5"])):
        out[f"{split}_average_5"] = simulate(work / f"b-{split}-avg5", cache, data, *common, *extra, "--rounds", "5", "--batchnorm", "average")
        out[f"{split}_pool_5"] = simulate(work / f"b-{split}-pool5", cache, data, *common, *extra, "--rounds", "5", "--batchnorm", "pool")
        out[f"{split}_pool_6"] = simulate(work / f"b-{split}-pool6", cache, data, *common, *extra, "--rounds", "6", "--batchnorm", "pool")
    return out


CLIENT_DP_EPSILONS = (1.0, 3.0, 10.0, 30.0, 100.0)


def client_dp(work: Path, cache: Path, data: str, size: int) -> dict:
    """Client-level DP-FedAvg with 100 clients (Dirichlet 0.1, all 100 every round: the most signal per unit of noise;
    updates clipped to norm 1: adaptive clipping's count noise must exceed half of z, which is 18 at ε = 1), 20 rounds,
    SGD from round 1 (no closed-form head under client-level DP): at which ε is it within 3 points of no DP?"""
    common = ["--image-size", str(size), "--test-per-class", "1000", "--rounds", "20", "--virtual-clients", "100",
              "--clients-per-round", "100", "--partition-scheme", "dirichlet", "--alpha", "0.1", "--head-init", "none"]
    out = {"none": simulate(work / "c-none", cache, data, *common)}
    for eps in CLIENT_DP_EPSILONS:
        out[f"{eps:g}"] = simulate(work / f"c-{eps:g}", cache, data, *common, "--client-dp-clip", "1", "--target-epsilon", f"{eps:g}")
    return out


def _acc(run: dict, which: int = -1) -> float:
    return 100 * run["rounds"][which]["test_accuracy"]


def _curve(run: dict) -> str:
    return " ".join(f"{100 * r['test_accuracy']:.1f}" for r in run["rounds"][1:])


def _worst_drop(run: dict, after: int = 3) -> float:
    """The largest fall below the best accuracy so far, over rounds after `after`."""
    best, worst = 0.0, 0.0
    for r in run["rounds"][1:]:
        acc = 100 * r["test_accuracy"]
        if r["round"] > after:
            worst = max(worst, best - acc)
        best = max(best, acc)
    return worst


def report(result: dict) -> str:
    lines = ["# Statistics rounds (`python -m bench.learning.statistics`)", "", f"Machine: {result['machine']}", ""]
    if "headline" in result:
        h = result["headline"]
        size = result["size"]
        lines += [f"## Headline: 50,000 images, 100 clients, Dirichlet 0.1, 10 a round, Lite0 at {size} px", "",
                  "| run | round 1 | best | final | worst drop after round 3 | seconds (process) | feature build s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, run in h.items():
            best = max(100 * r["test_accuracy"] for r in run["rounds"][1:])
            build = f"{run['feature_build']:.0f}" if run["feature_build"] else "read from the cache"
            lines.append(f"| {name} | {_acc(run, 1):.2f}% | {best:.2f}% | **{_acc(run):.2f}%** | {_worst_drop(run):.2f} | "
                         f"{run['seconds']:.0f} | {build} |")
        lines += ["", "Curves (test accuracy after each round):", ""]
        lines += [f"- {name}: {_curve(run)}" for name, run in h.items()]
        if "headline_server_lr_1" in result:
            old = result["headline_server_lr_1"]
            lines.append(f"- ridge_then_sgd with server lr 1 (before it became 0.1 after a ridge head): "
                         f"{' '.join(f'{a:.1f}' for a in old['curve'])} (final {old['final']:.2f}%, worst drop {old['worst_drop_after_round_3']:.2f})")
        if "headline_feature_build" in result:
            first = result["headline_feature_build"]
            lines.append(f"- One-off feature build from an empty cache: {first['seconds']:.0f} s for the clients' {first['images']:,} "
                         f"training images at {first['size']} px (the coordinator's 10,000 test images once more); later runs read them back.")
        lines.append("")
    for key, title in (("skew_defaults", "the simulator's default recipe (client lr 0.01, batch 32)"),
                       ("skew", "the bench's recipe (client lr 0.003, batch 64)")):
        if key not in result:
            continue
        lines += [f"## Skew check: 20 clients, 5 a round, 2,000 images, 64 px, 10 rounds; {title}", "",
                  "| head-init | IID final | Dirichlet 0.1 final | gap | worst drop after round 3 (Dirichlet) | Dirichlet curve |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for init in ("auto", "none"):
            iid, dirichlet = result[key][f"{init}_iid"], result[key][f"{init}_dirichlet"]
            lines.append(f"| {init} | {_acc(iid):.2f}% | {_acc(dirichlet):.2f}% | {_acc(iid) - _acc(dirichlet):+.2f} | "
                         f"{_worst_drop(dirichlet):.2f} | {_curve(dirichlet)} |")
        lines.append("")
    if "batchnorm" in result:
        lines += ["## BatchNorm: averaged (FedAvg) against pooled in the last round; Lite0, --train all, 64 px, 5,000 images, 4 clients", "",
                  "| split | 5 rounds, averaged | 4 rounds + pooled | 5 rounds + pooled | curve (4 + pooled) |", "| --- | --- | --- | --- | --- |"]
        b = result["batchnorm"]
        for split in ("iid", "dirichlet"):
            lines.append(f"| {split} | {_acc(b[f'{split}_average_5']):.2f}% | **{_acc(b[f'{split}_pool_5']):.2f}%** | "
                         f"{_acc(b[f'{split}_pool_6']):.2f}% | {_curve(b[f'{split}_pool_5'])} |")
        lines.append("")
    if "client_dp" in result:
        c = result["client_dp"]
        base = _acc(c["none"])
        lines += [f"## Client-level DP-FedAvg, 100 clients (all each round), Dirichlet 0.1, 20 rounds, {result.get('size', '?')} px, SGD head", "",
                  f"Without DP: {base:.2f}%.", "", "| target ε | final | against no DP | curve |", "| --- | --- | --- | --- |"]
        for eps in CLIENT_DP_EPSILONS:
            run = c.get(f"{eps:g}")
            if run:
                lines.append(f"| {eps:g} | {_acc(run):.2f}% | {_acc(run) - base:+.2f} | {_curve(run)} |")
        within = [eps for eps in CLIENT_DP_EPSILONS if f"{eps:g}" in c and _acc(c[f"{eps:g}"]) >= base - 3]
        lines += ["", f"Within 3 points of no DP from ε = {min(within):g}." if within else
                  f"Not within 3 points at any ε up to {max(CLIENT_DP_EPSILONS):g}.", ""]
    if "sizes" in result:
        lines += ["## Input size: the ridge head on 5,000 / 2,000 images (10 clients, one round)", "", "| px | accuracy | feature build s |",
                  "| --- | --- | --- |"]
        for size, run in result["sizes"].items():
            build = f"{run['feature_build']:.0f}" if run["feature_build"] else "read from the cache"
            lines.append(f"| {size} | {_acc(run):.2f}% | {build} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedtl-bench-statistics"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fedtl-bench-heads-cache"))
    ap.add_argument("--size", type=int, default=224, help="input size of the headline runs")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the headline runs")
    ap.add_argument("--only", nargs="*", default=["headline", "skew", "skew_defaults", "sizes", "batchnorm", "client_dp"])
    a = ap.parse_args()
    path = HERE / "results" / "statistics.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["machine"] = machine()
    if "sizes" in a.only:
        result["sizes"] = sizes(a.work, a.cache, a.data)
    if "skew" in a.only:
        result["skew"] = skew(a.work, a.cache, a.data)
    if "skew_defaults" in a.only:
        result["skew_defaults"] = skew_defaults(a.work, a.cache, a.data)
    if "batchnorm" in a.only:
        result["batchnorm"] = batchnorm_runs(a.work, a.cache, a.data)
    if "headline" in a.only:
        result["headline"], result["size"] = headline(a.work, a.cache, a.data, a.size, a.rounds), a.size
    if "client_dp" in a.only:
        result["client_dp"] = client_dp(a.work, a.cache, a.data, result.get("size", a.size))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    write_report(result)


def write_report(result: dict) -> None:
    (HERE / "results" / "statistics.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
