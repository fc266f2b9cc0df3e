"""Accuracy against ε on real CIFAR-10, both DP modes, through the real federation (server + 4 client processes).

One command: `python -m bench.privacy.run [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--scales reference all]`

The reference configuration of bench/learning (EfficientNet-Lite0 with ImageNet weights, head only on cached features,
64 px, 4 IID clients, 5 rounds, all clients every round), at two data sizes: `reference` (500 training images per
class, 5,000) and `all` (all 50,000: DP gets cheaper per image as data grows). For each, ε ∈ {1, 3, 8} at δ = 1e-5
in each mode, and ε = ∞ (no DP):
- non-private: the reference recipe (SGD lr 0.03, momentum 0.9, batch 64), the baseline every gap is measured from;
- record-level DP-SGD: `--dp-clip 1 --dp-epsilon E` with the recipe DP-SGD wants (larger batches, larger steps:
  lr 1.0, batch 256 for `reference`, 512 for `all`; no weight decay); each client calibrates its own noise;
- client-level DP-FedAvg: `--client-dp-clip 1 --target-epsilon E` on the reference recipe; 4 clients, all selected;
  at `reference` also with `--secure-aggregation` (distributed DP: the clients add the noise under the masks).
`all` also runs the DP-SGD recipe without DP, so the cost of a private round is measured against the same batches.
`heads`: all 50,000 images at 128 px, where round 1 builds a closed-form head (docs/learning.md): non-private with the
default ridge head (then 4 SGD rounds) and with none, and record-level DP at ε ∈ {1, 3} with DP-SGD alone and with a
noised class-mean head first (`--head-feature-clip 50`: half the budget for the head, the rest for 4 DP-SGD rounds).
Clients keep their feature caches across runs at a scale (their privacy ledgers are removed between runs: each run is
a new data owner). Writes bench/privacy/results/results.json, RESULTS.md and accuracy_vs_epsilon.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import machine, rounds, run_federation

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLIENTS = 4
EPSILONS = (1.0, 3.0, 8.0)
RECIPE = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64", "--train", "head", "--head-init", "none", "--feature-cache", "auto",
          "--test-per-class", "200", "--num-partitions", str(CLIENTS), "--partition-scheme", "iid", "--seed", "0", "--rounds", "5",
          "--min-clients", str(CLIENTS), "--local-epochs", "1", "--join-grace", "2", "--round-timeout", "3600", "--finish-grace", "10",
          "--dp-delta", "1e-5"]
PLAIN = ["--batch-size", "64", "--lr", "0.03", "--momentum", "0.9", "--weight-decay", "5e-4"]
SCALES = {"reference": 500, "all": 0, "heads": 0}  # training images per class (0: all)
DP_BATCH = {"reference": 256, "all": 512, "heads": 512}
HEAD_CLIP = "50"  # the largest Lite0 feature norm on CIFAR-10 at 128 px is 48.8 (docs/learning.md)


def head_runs() -> dict[str, tuple[str, float, list[str]]]:
    """The `heads` scale: what a closed-form head in round 1 does for each mode (128 px, 50,000 images)."""
    size = ["--image-size", "128"]
    dp_recipe = [*size, "--batch-size", str(DP_BATCH["heads"]), "--lr", "1.0", "--momentum", "0.9", "--weight-decay", "0"]
    table: dict[str, tuple[str, float, list[str]]] = {
        "none": ("none", float("inf"), [*size, *PLAIN, "--head-init", "auto"]),
        "none_sgd": ("none (no closed-form head)", float("inf"), [*size, *PLAIN]),
        "none_dp_recipe": ("none (DP-SGD's recipe)", float("inf"), dp_recipe),
    }
    for eps in (1.0, 3.0):
        private = [*dp_recipe, "--dp-clip", "1", "--dp-epsilon", f"{eps:g}"]
        table[f"record_{eps:g}"] = ("record", eps, private)
        table[f"record_ncm_{eps:g}"] = ("record, class-mean head", eps, [*private, "--head-init", "ncm", "--head-feature-clip", HEAD_CLIP])
    return table


def runs(scale: str) -> dict[str, tuple[str, float, list[str]]]:
    """name -> (mode, target ε (inf: none), extra server flags)."""
    if scale == "heads":
        return head_runs()
    dp_recipe = ["--batch-size", str(DP_BATCH[scale]), "--lr", "1.0", "--momentum", "0.9", "--weight-decay", "0"]
    table: dict[str, tuple[str, float, list[str]]] = {"none": ("none", float("inf"), PLAIN)}
    if scale == "all":
        table["none_dp_recipe"] = ("none (DP-SGD's recipe)", float("inf"), dp_recipe)
    for eps in EPSILONS:
        table[f"record_{eps:g}"] = ("record", eps, [*dp_recipe, "--dp-clip", "1", "--dp-epsilon", f"{eps:g}"])
    for eps in EPSILONS:
        table[f"client_{eps:g}"] = ("client", eps, [*PLAIN, "--client-dp-clip", "1", "--target-epsilon", f"{eps:g}"])
    if scale == "reference":  # the same, with the noise added by the clients under secure aggregation's masks
        for eps in EPSILONS:
            table[f"distributed_{eps:g}"] = ("distributed", eps, [*PLAIN, "--client-dp-clip", "1", "--target-epsilon", f"{eps:g}",
                                                                  "--secure-aggregation"])
    return table


def federated(scale: str, name: str, extra: list[str], data: str, work: Path) -> dict:
    run_dir = work / scale / name
    args = [*RECIPE, "--train-per-class", str(SCALES[scale]), *extra, "--data", data]
    for i in range(CLIENTS):  # a new data owner each run; the feature cache stays
        (work / scale / f"org{i}" / "privacy_ledger.json").unlink(missing_ok=True)
    started = time.monotonic()
    run_federation(run_dir, args, {f"org{i}": ["--data", data, "--workdir", str(work / scale / f"org{i}"), "--threads", "1"]
                                   for i in range(CLIENTS)}, work, f"{scale}-{name}", 7200)
    ledgers = [json.loads((work / scale / f"org{i}" / "privacy_ledger.json").read_text())
               for i in range(CLIENTS) if (work / scale / f"org{i}" / "privacy_ledger.json").exists()]
    noise = sorted({round(v, 4) for ledger in ledgers for v in ledger.get("noise", {}).values()})
    federation = run_dir / "privacy_ledger.json"  # client-level DP: the coordinator's ledger and its calibrated z
    if federation.exists():
        noise = [round(json.loads(federation.read_text())["noise"], 4)]
    recorded = [*args[:-1], os.path.relpath(data, HERE.parents[1])]
    return {"scale": scale, "name": name, "date": machine()["date"], "server_args": recorded, "rounds": rounds(run_dir), "wall_seconds": time.monotonic() - started,
            "noise_multipliers": noise}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.privacy.run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--scales", nargs="*", default=list(SCALES), choices=list(SCALES))
    p.add_argument("--only", nargs="*", default=None, help="run names to (re)run; others are kept from results.json")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if not Path(a.data).exists():
        print(f"need the CIFAR-10 JPEG archive: --data /path/to/cifar10-jpeg.tar.gz (not found: {a.data})", file=sys.stderr)
        return 2
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in a.scales:
            for name, (mode, eps, extra) in runs(scale).items():
                if a.only and name not in a.only:
                    continue
                outcome = federated(scale, name, extra, a.data, Path(tmp))
                outcome.update(mode=mode, target_epsilon=None if eps == float("inf") else eps)
                results["runs"][f"{scale}|{name}"] = outcome
                results["machine"] = machine()
                path.write_text(json.dumps(results, indent=2) + "\n")
                last = outcome["rounds"][-1]
                later = [r["seconds"] for r in outcome["rounds"] if r["round"] >= 2]
                print(f"{scale}|{name}: accuracy {100 * last['test_accuracy']:.2f}%, ε {last.get('epsilon') or last.get('record_epsilon')}, "
                      f"median round {statistics.median(later):.2f}s ({outcome['wall_seconds']:.0f}s wall)", flush=True)
    from bench.privacy.report import write_report

    write_report(results, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
