"""Server memory and scale with many clients, using lightweight protocol-level clients (bench/load_clients.py).

1. Peak RSS vs N: N clients (2 -> 32) each download and upload a full ResNet-18 update every round;
   the server's peak RSS must stay flat (streaming aggregation, bounded staging), not grow with N.
2. Scale: 200 connected clients, 50 selected per round (MobileNetV3-small, 6 MB): round time,
   server RSS and threads.

`python -m bench.scale`
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.procs import PeakRss, Process, machine, rounds, start_server, summary


def run(model: str, n: int, per_round: int, rounds_total: int, work: Path) -> dict:
    run_dir = work / f"{model}-{n}-{per_round}"
    server_args = ["--model", model, "--weights", "none", "--data", "synthetic:100", "--rounds", str(rounds_total),
                   "--min-clients", str(n), "--clients-per-round", str(per_round), "--eval-every", "0",
                   "--join-grace", "2", "--round-timeout", "600", "--finish-grace", "10"]
    server, port = start_server(run_dir, server_args, work / f"server-{run_dir.name}.log")
    try:
        with PeakRss(server.popen.pid) as rss:
            driver = Process(["-m", "bench.load_clients", "--server", f"127.0.0.1:{port}", "--clients", str(n)],
                             work / f"driver-{run_dir.name}.log")
            code = server.wait(1800)
            driver.wait(120)
        if code != 0:
            raise RuntimeError((work / f"server-{run_dir.name}.log").read_text()[-3000:])
    finally:
        server.stop()
    records = [r for r in rounds(run_dir) if r["round"] >= 2]
    return {"model": model, "clients": n, "per_round": per_round, "seconds": summary([r["seconds"] for r in records]),
            "bytes_up_per_round": records[0]["bytes_up"], "server_peak_rss_mb": rss.peak_kb / 1024,
            "server_threads_max": rss.threads}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale")
    p.add_argument("--memory-clients", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--scale-clients", type=int, default=200)
    p.add_argument("--scale-per-round", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    a = p.parse_args()
    out: dict = {"memory": [], "scale": None}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.memory_clients:
            r = run("resnet18", n, n, 4, Path(tmp))
            out["memory"].append(r)
            print(f"resnet18, {n:>2} clients all selected: server peak RSS {r['server_peak_rss_mb']:.0f} MB, "
                  f"threads {r['server_threads_max']}, round {r['seconds']['median']:.2f}s", flush=True)
        r = run("mobilenet_v3_small", a.scale_clients, a.scale_per_round, 4, Path(tmp))
        out["scale"] = r
        print(f"mobilenet_v3_small, {a.scale_clients} connected, {a.scale_per_round} per round: round {r['seconds']['median']:.2f}s "
              f"(min {r['seconds']['min']:.2f}, max {r['seconds']['max']:.2f}), server peak RSS {r['server_peak_rss_mb']:.0f} MB, "
              f"threads {r['server_threads_max']}")
    base = out["memory"][0]["server_peak_rss_mb"]
    out["rss_ratio_max_vs_min_clients"] = out["memory"][-1]["server_peak_rss_mb"] / base
    out["machine"] = machine()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"peak RSS at {a.memory_clients[-1]} clients / at {a.memory_clients[0]}: {out['rss_ratio_max_vs_min_clients']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
