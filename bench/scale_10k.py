"""10,000 connected client sessions on one coordinator, 1,000 selected a round, head-only updates (EfficientNet-Lite0's
51 kB head): round time, coordinator peak RSS and threads, updates lost.

Sessions come from a few driver processes (bench/load_clients.py: real gRPC, the real protocol, no training), several
sessions multiplexed per TCP connection, so 10,000 sessions hold about 1,000 connections. Everything shares this
machine's cores: the drivers' CPU is in the round time too.

`python -m bench.scale_10k [--connected 10000 --per-round 1000 --drivers 4 --per-connection 10]`
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

from bench.procs import PeakRss, Process, machine, rounds, start_server, summary


def run(connected: int, per_round: int, drivers: int, per_connection: int, rounds_total: int, work: Path) -> dict:
    run_dir = work / "run"
    server_args = ["--model", "efficientnet_lite0", "--weights", "none", "--train", "head", "--head-init", "none", "--data", "synthetic:20000",
                   "--rounds", str(rounds_total), "--min-clients", str(connected), "--clients-per-round", str(per_round),
                   "--max-clients", str(connected), "--join-rate", "0", "--join-rate-total", "0", "--eval-every", "0",
                   "--join-grace", "5", "--round-timeout", "600", "--finish-grace", "30", "--wait-timeout", "900"]
    server, port = start_server(run_dir, server_args, work / "server.log")
    share = -(-connected // drivers)
    try:
        with PeakRss(server.popen.pid, every=0.5) as rss:
            procs = [Process(["-m", "bench.load_clients", "--server", f"127.0.0.1:{port}", "--clients", str(min(share, connected - i * share)),
                              "--first", str(i * share), "--per-connection", str(per_connection)], work / f"driver-{i}.log")
                     for i in range(drivers)]
            code = server.wait(3600)
            for proc in procs:
                proc.wait(300)
        if code != 0:
            raise RuntimeError((work / "server.log").read_text()[-3000:])
    finally:
        server.stop()
    reports = [json.loads((work / f"driver-{i}.log").read_text().strip().splitlines()[-1]) for i in range(drivers)]
    records = [r for r in rounds(run_dir) if r["round"] >= 1]
    later = [r for r in records if r["round"] >= 2]
    return {"connected": connected, "per_round": per_round, "drivers": drivers, "per_connection": per_connection,
            "connections": sum(-(-min(share, connected - i * share) // per_connection) for i in range(drivers)),
            "seconds": summary([r["seconds"] for r in later]), "round_1_seconds": records[0]["seconds"],
            "phases": {k: summary([r["phases"][k] for r in later]) for k in later[0]["phases"]},
            "answered": [r["answered"] for r in records], "bytes_up_per_round": records[0]["bytes_up"],
            "updates_accepted_by_drivers": sum(r["accepted"] for r in reports), "updates_in_round_records": sum(r["answered"] for r in records),
            "refused": sum(r["refused"] for r in reports), "rejected_in_records": [r["rejected"] for r in records],
            "joins": (work / "server.log").read_text().count(" connected (load"),  # more than `connected`: sessions that reconnected
            "driver_stream_errors": dict(sum((collections.Counter(r["errors"]) for r in reports), collections.Counter())),
            "server_rss_before_joins_mb": rss.samples[0] / 1024 if rss.samples else None,
            "server_peak_rss_mb": rss.peak_kb / 1024, "server_threads_max": rss.threads}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_10k")
    p.add_argument("--connected", type=int, default=10_000)
    p.add_argument("--per-round", type=int, default=1_000)
    p.add_argument("--drivers", type=int, default=4)
    p.add_argument("--per-connection", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/scale_10k.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(a.connected, a.per_round, a.drivers, a.per_connection, a.rounds, Path(tmp))
    r["machine"] = machine()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"{r['connected']} sessions over {r['connections']} connections, {r['per_round']} a round: round {r['seconds']['median']:.2f} s "
          f"(max {r['seconds']['max']:.2f}), server peak RSS {r['server_peak_rss_mb']:.0f} MB, threads {r['server_threads_max']}, "
          f"updates accepted by drivers {r['updates_accepted_by_drivers']} = in round records {r['updates_in_round_records']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
