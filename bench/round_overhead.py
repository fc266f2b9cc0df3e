"""Round overhead with negligible local training: real server and N real client processes on this machine.

Each client takes one SGD step on 8 images (`--max-steps 1 --batch-size 8`, 8 images per shard), so
a round is almost entirely moving, verifying, loading and aggregating weights. Reports the median
seconds per round over rounds 2-5 (round 1 pays client start-up: model build, first download), its
spread, the server's peak RSS, and the ratio to the raw-gRPC floor for the same bytes: N downloads
plus N uploads of the model, timed in the same run with bench/transport.py's bare grpcio stream.

`python -m bench.round_overhead --models resnet18 resnet50 --clients 2 4 8 16`
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench import transport
from bench.procs import Process, machine, rounds, run_federation, summary


def one_config(model: str, n: int, rounds_total: int, work: Path) -> dict:
    run_dir = work / f"{model}-{n}"
    server_args = ["--model", model, "--weights", "none", "--data", f"synthetic:{8 * n}", "--rounds", str(rounds_total),
                   "--min-clients", str(n), "--max-steps", "1", "--batch-size", "8", "--eval-every", "0",
                   "--join-grace", "1", "--round-timeout", "600", "--finish-grace", "5"]
    rss = run_federation(run_dir, server_args, {f"c{i}": ["--data", f"synthetic:{8 * n}", "--workdir", str(run_dir / f"c{i}"),
                                                         "--threads", "1"] for i in range(n)}, work, f"{model}-{n}", 1800)
    records = [r for r in rounds(run_dir) if r["round"] >= 2]
    seconds = [r["seconds"] for r in records]
    phases = {k: summary([r["phases"][k] for r in records])["median"] for k in records[0]["phases"]}
    moved = records[0]["bytes_down"] + records[0]["bytes_up"]
    return {"model": model, "clients": n, "seconds": summary(seconds), "bytes_per_round": moved, "phases_median": phases,
            "server_peak_rss_mb": rss.peak_kb / 1024, "server_threads": rss.threads}


def floor_seconds(model_bytes: int, n: int, work: Path) -> float:
    """Raw gRPC time for N downloads of the model bytes, doubled for the N uploads (same bytes back)."""
    chunk = 1 << 20
    server = Process(["-c", f"from bench.transport import raw_server; raw_server({model_bytes}, {chunk})"], work / f"raw-{n}.log")
    try:
        while not (work / f"raw-{n}.log").read_text().strip():
            time.sleep(0.05)
        port = int((work / f"raw-{n}.log").read_text().split()[0])
        times = [transport._run_receiver("raw", port, n, 1)[0] for _ in range(3)]
    finally:
        server.stop()
    return 2 * summary(times)["median"]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.round_overhead")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/round_overhead.json"))
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in a.models:
            size = len(transport.model_bytes(model))
            for n in a.clients:
                r = one_config(model, n, a.rounds, work)
                r["model_bytes"] = size
                r["raw_grpc_floor_seconds"] = floor_seconds(size, n, work)
                r["ratio_to_floor"] = r["seconds"]["median"] / r["raw_grpc_floor_seconds"]
                results.append(r)
                print(f"{model} x {n:>2}: median {r['seconds']['median']:.2f}s per round (min {r['seconds']['min']:.2f}, "
                      f"max {r['seconds']['max']:.2f}); raw gRPC floor {r['raw_grpc_floor_seconds']:.2f}s -> "
                      f"{r['ratio_to_floor']:.1f}x; server peak RSS {r['server_peak_rss_mb']:.0f} MB; phases {r['phases_median']}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"runs": results, "machine": machine()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
