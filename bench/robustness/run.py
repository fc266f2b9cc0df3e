"""Every aggregation rule against every attack, on real CIFAR-10 images through the real federation.

One command: `python -m bench.robustness.run [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--quick]`

Each cell runs a real server process and 10 clients: the real client (client/app.py) in threads of this process,
the dishonest ones with bench/robustness/attacks.py's runtimes. Client i always trains shard i (pinned in a
tokens file); the first `malicious` clients attack. The reference configuration of bench/learning (EfficientNet-
Lite0 with ImageNet weights, head only on cached features, 64 px, 5,000 training and 2,000 test images), over 10
clients. Writes bench/robustness/results/results.json, then RESULTS.md and a heatmap (report.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.procs import machine, rounds, start_server
from bench.robustness.attacks import ATTACKS, OMNISCIENT, TARGET, AttackRuntime, Colluders, Witness, trigger

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLIENTS = 10

RECIPE = ["--model", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64", "--train", "head", "--head-init", "none", "--train-per-class", "500",
          "--test-per-class", "200", "--num-partitions", str(CLIENTS), "--seed", "0", "--min-clients", str(CLIENTS), "--batch-size", "64",
          "--lr", "0.03", "--momentum", "0.9", "--weight-decay", "5e-4", "--local-epochs", "1", "--join-grace", "1",
          "--round-timeout", "900", "--finish-grace", "10"]


def rules(data: str) -> dict[str, list[str]]:
    return {
        "mean": ["--norm-quantile", "0"],  # plain FedAvg, its default norm bound switched off
        "default": [],  # the plain mean as shipped: each update clipped to the median norm seen, from round 1
        "mean+norm-bound": ["--norm-quantile", "0.5"],
        "median": ["--aggregation", "median"],
        "trimmed-mean": ["--aggregation", "trimmed-mean", "--trim-fraction", "0.3"],
        "multi-krum": ["--aggregation", "krum", "--byzantine", "3", "--krum-select", "7"],
        "bulyan": ["--aggregation", "bulyan", "--byzantine", "1"],
        "dnc": ["--aggregation", "dnc", "--byzantine", "3"],
        "geomedian": ["--aggregation", "geomedian"],
        "fltrust": ["--aggregation", "fltrust", "--root-data", data, "--root-per-class", "10"],
    }


def cell(data: str, rule: list[str], attack: str, malicious: int, scheme: str, rounds_total: int, work: Path, cache: Path,
         train: str = "head") -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work))
    tokens = {f"c{i}": secrets.token_hex(16) for i in range(CLIENTS)}
    tokens_file = run_dir / "tokens.txt"
    tokens_file.write_text("".join(f"{name} {tok} shard={i}\n" for i, (name, tok) in enumerate(tokens.items())))
    partition = ["--partition-scheme", scheme] + (["--alpha", "0.5"] if scheme == "dirichlet" else [])
    args = [*RECIPE, *partition, "--rounds", str(rounds_total), "--tokens-file", str(tokens_file), "--data", data, *rule, "--train", train]
    if train == "all":  # order-based rules hold a round's updates: at 13.7 MB each, bound the round by the 10 clients
        args += ["--max-clients", str(CLIENTS)]
    server, port = start_server(run_dir, args, run_dir / "server.log")
    witnesses = CLIENTS - malicious if attack in OMNISCIENT else 0
    colluders = Colluders(malicious, CLIENTS, witnesses) if attack in ("alie", *OMNISCIENT) else None
    threads, outcomes = [], {}
    try:
        for i, (name, token) in enumerate(tokens.items()):
            dishonest = attack if i < malicious else None
            thread = threading.Thread(target=_client, args=(name, token, i, port, data, cache, dishonest, colluders, outcomes), daemon=True)
            thread.start()
            threads.append(thread)
        code = server.wait(3600)
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    if code != 0:
        raise RuntimeError(f"server exited {code}:\n{(run_dir / 'server.log').read_text()[-3000:]}")
    records = rounds(run_dir)
    result = {"accuracy": records[-1]["test_accuracy"], "loss": records[-1]["test_loss"], "clients": outcomes,
              "rejected": sum(sum(r.get("rejected", {}).values()) for r in records), "capped": sum(r.get("capped", 0) for r in records),
              "aggregate_seconds": sorted(r["phases"]["aggregate"] for r in records if r["round"] >= 2)[len(records[2:]) // 2]}
    if attack == "backdoor":
        result["backdoor_success"] = backdoor_success(run_dir / "final_model.safetensors", data, cache)
    return result


def _client(name: str, token: str, index: int, port: int, data: str, cache: Path, attack: str | None, colluders: Colluders | None,
            outcomes: dict) -> None:
    from fedtl.client.app import ClientApp
    from fedtl.client.config import parse_args

    cfg = parse_args(["--server", f"127.0.0.1:{port}", "--name", name, "--token", token, "--partition", f"{index}/{CLIENTS}",
                      "--data", data, "--data-cache", str(cache), "--workdir", str(cache / "robustness-clients" / name),
                      "--max-wait", "120", "--log-level", "WARNING"], env={})
    app = ClientApp(cfg)
    runtime_args = (cfg.data, cfg.data_cache, cfg.workdir, app.device, False, cfg.name)
    if attack:
        app.runtime = AttackRuntime(*runtime_args, attack=attack, clients=CLIENTS, colluders=colluders)
    elif colluders is not None and colluders.witnesses:
        app.runtime = Witness(*runtime_args, colluders=colluders)
    outcomes[name] = app.run()


def backdoor_success(model_path: Path, data: str, cache: Path) -> float:
    """Share of triggered test images (not of the target class) the final model puts in the target class."""
    from fedtl.common.batches import InputTransform, batches
    from fedtl.common.data import open_split
    from fedtl.common.models import load_trained

    model, info = load_trained(model_path)
    test = open_split(data, "test", cache).first_per_class(200).load()
    keep = test.labels != TARGET
    images = trigger(test.images[keep])
    transform = InputTransform(info.mean, info.std, info.image_size)
    hits = 0
    with torch.no_grad():
        for idx in batches(len(images), 128, shuffle=False):
            hits += int((model(transform(images[idx])).argmax(1) == TARGET).sum())
    return hits / len(images)


def ready(data: str) -> bool:
    """The CIFAR-10 archive is there (else one line says so), and this process is set up to host clients in threads."""
    if not Path(data).exists():
        print(f"need the CIFAR-10 JPEG archive: --data /path/to/cifar10-jpeg.tar.gz (not found: {data})", file=sys.stderr)
        return False
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    return True


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--settings", nargs="*", default=["iid:2", "iid:3", "dirichlet:2"],
                   help="partition:malicious[:train], e.g. iid:2, or iid:2:all for full fine-tuning")
    p.add_argument("--rules", nargs="*", default=None)
    p.add_argument("--attacks", nargs="*", default=["none", *ATTACKS])
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if not ready(a.data):
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    if "rounds" not in results:  # results from before rounds were kept per setting: all ran the recipe's --rounds
        old = results.get("recipe", [])
        ran = int(old[old.index("--rounds") + 1]) if "--rounds" in old else a.rounds
        results["rounds"] = {key.split("|")[0]: ran for key in results["cells"]}
    cache = Path.home() / ".cache" / "fedtl"
    table = rules(a.data)
    chosen = a.rules or list(table)
    with tempfile.TemporaryDirectory() as tmp:
        for setting in a.settings:
            scheme, malicious, *train = setting.split(":")
            for rule in chosen:
                for attack in a.attacks:
                    key = f"{setting}|{rule}|{attack}"
                    started = time.monotonic()
                    m = 0 if attack == "none" else int(malicious)
                    outcome = cell(a.data, table[rule], attack if m else "sign_flip", m, scheme, a.rounds, Path(tmp), cache, *train)
                    outcome["seconds"] = time.monotonic() - started
                    results["cells"][key] = outcome
                    results["machine"] = machine()
                    results["recipe"] = RECIPE
                    results["rounds"][setting] = a.rounds
                    path.write_text(json.dumps(results, indent=2) + "\n")
                    extra = f", backdoor {100 * outcome['backdoor_success']:.1f}%" if "backdoor_success" in outcome else ""
                    print(f"{key}: clean accuracy {100 * outcome['accuracy']:.2f}%{extra} ({outcome['seconds']:.0f}s)", flush=True)
    from bench.robustness.report import write_report

    write_report(results, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
