"""What watching a run costs: the dashboard and /metrics on vs off, and with 16 open event streams.

Real server and client processes; each variant runs the same federation (same seed), alternating
off / on / on + 16 streams, `--repeats` times, so a busy machine slows all three alike. Reports the
median round time of rounds 2.. of each run, its ratio to "off" in the same repeat, the server's peak
RSS, and the bytes of the page (HTML + JS + CSS, vendored uPlot included).

`python -m bench.observe [--rounds 12] [--repeats 2]`
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import PeakRss, Process, machine, rounds, start_server, summary
from fedtl.server.observe.web import STATIC, static_files

TOKEN = "bench-observe-token-0123456789"
CLIENTS = 3


def _streams(url: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    """N event-stream readers that drain what the server sends until told to stop."""
    parts = urlsplit(url)

    def read() -> None:
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                conn.request("GET", "/events", headers={"Authorization": f"Bearer {TOKEN}"})
                answer = conn.getresponse()
                while not stop.is_set() and answer.read1(65536):
                    pass
            except (OSError, http.client.HTTPException):  # the server ended the stream or exited: try again until told to stop
                time.sleep(0.2)

    threads = [threading.Thread(target=read, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


class CpuTime:
    """The server's CPU seconds (user + system), sampled until it exits: less noisy than wall time on a shared machine."""

    def __init__(self, pid: int) -> None:
        self.pid, self.seconds = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            try:
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                return
            self.seconds = (int(fields[11]) + int(fields[12])) / tick
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.seconds


def one_run(variant: str, work: Path, rounds_total: int, index: int) -> dict:
    run_dir = work / f"{variant}-{index}"
    args = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:2400", "--rounds", str(rounds_total),
            "--min-clients", str(CLIENTS), "--join-grace", "1", "--batch-size", "32", "--seed", "5", "--finish-grace", "5"]
    if variant != "off":
        args += ["--dashboard", "0", "--dashboard-token", TOKEN]
    server, port = start_server(run_dir, args, work / f"{variant}-{index}-server.log")
    stop, clients, cpu = threading.Event(), [], CpuTime(server.popen.pid)
    try:
        with PeakRss(server.popen.pid) as rss:
            if variant == "on+16 streams":
                url = json.loads((run_dir / "server.json").read_text())["dashboard"]
                _streams(url, 16, stop)
            for i in range(CLIENTS):
                clients.append(Process(["-m", "client", "--server", f"127.0.0.1:{port}", "--name", f"c{i}", "--data", "synthetic:2400",
                                        "--threads", "1", "--workdir", str(run_dir / f"c{i}")], work / f"{variant}-{index}-c{i}.log"))
            code = server.wait(600)
        if code != 0:
            raise RuntimeError(f"{variant}: server exited {code}")
    finally:
        stop.set()
        for c in clients:
            c.stop()
        server.stop()
    seconds = [r["seconds"] for r in rounds(run_dir) if r["round"] >= 2]
    return {"variant": variant, "round_seconds_median": statistics.median(seconds), "server_peak_rss_mb": rss.peak_kb / 1024,
            "server_cpu_seconds": cpu.stop()}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observe")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/observe.json"))
    a = p.parse_args()
    variants = ["off", "on", "on+16 streams"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(a.repeats):
            for variant in variants:
                runs.append(one_run(variant, Path(tmp), a.rounds, repeat))
                print(json.dumps(runs[-1]), flush=True)
    result: dict = {"machine": machine(), "rounds": a.rounds, "repeats": a.repeats, "clients": CLIENTS, "runs": runs, "variants": {}}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        ratios = [m["round_seconds_median"] / off["round_seconds_median"] for m, off in zip(mine, [r for r in runs if r["variant"] == "off"])]
        rss_delta = [m["server_peak_rss_mb"] - off["server_peak_rss_mb"] for m, off in zip(mine, [r for r in runs if r["variant"] == "off"])]
        cpu = [m["server_cpu_seconds"] - off["server_cpu_seconds"] for m, off in zip(mine, [r for r in runs if r["variant"] == "off"])]
        result["variants"][variant] = {"round_seconds": summary([m["round_seconds_median"] for m in mine]),
                                       "server_cpu_seconds": summary([m["server_cpu_seconds"] for m in mine]),
                                       "server_cpu_seconds_over_off": summary(cpu),
                                       "ratio_to_off": summary(ratios), "rss_mb_over_off": summary(rss_delta)}
    files = static_files()
    result["page_bytes"] = {name: len(files[name]) for name in STATIC}
    result["page_bytes_total"] = sum(result["page_bytes"].values())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for variant, v in result["variants"].items():
        print(f"{variant:>14}: round {v['round_seconds']['median']:.3f}s, x{v['ratio_to_off']['median']:.3f} of off, "
              f"RSS {v['rss_mb_over_off']['median']:+.1f} MB, server CPU {v['server_cpu_seconds']['median']:.1f}s "
              f"({v['server_cpu_seconds_over_off']['median']:+.2f}s)")
    print(f"page: {result['page_bytes_total'] / 1024:.1f} KiB (HTML+JS+CSS, uPlot included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
