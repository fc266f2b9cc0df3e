"""Issue 30's attack table, re-run against this tree: what one participant could do with the defaults, each row measured
the way the issue measured it.

The reference run of the issue: tiny_cnn trained from scratch on 2,500 CIFAR-10 images (250 a class; 2,000 test images),
4 clients of which one misbehaves, 6 rounds, `--min-clients 4`, every other flag at its default. Learning rows run the
real server process and 4 real clients (client/app.py) in threads, the dishonest one with bench/robustness/attacks.py's
runtime; availability rows add what they need: a silent gRPC client, a real client process stopped with Ctrl-C (SIGINT),
a squatter on a site's name, a swarm of joins from another network address. The last rows check the data owner's δ, the
dashboard under idle connections, every float flag given `nan`, and quote multi-krum under min-max from bench/robustness/run.

`python -m bench.robustness.table [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--only ROW ...]` (about 15 minutes on
2 cores). Writes bench/robustness/results/table.json, then table.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.hostile import _silent_client
from bench.procs import Process, machine, rounds, start_server
from bench.robustness.attacks import AttackRuntime
from bench.robustness.run import DEFAULT_DATA, ready
from fedtl.common import wire
from fedtl.common.config import Hello
from fedtl.protos import federation_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
NAMES = ["c0", "c1", "c2", "c3"]  # c0 misbehaves where a row has a dishonest client
REFERENCE = ["--model", "tiny_cnn", "--weights", "none", "--train-per-class", "250", "--test-per-class", "200", "--min-clients", "4",
             "--rounds", "6", "--seed", "0", "--join-grace", "1", "--finish-grace", "5"]
NOISE = 0.03  # the issue: "±3 points is noise at this size"
SEEDS = (0, 1, 2)  # learning rows: the mean of one run per seed

# as filed in issue 30 against main 79c7493 (not measured here): the column this run is compared with
BEFORE = {
    "honest": "29.7 %",
    "sign_flip_x10": "9.8 %", "sign_flip_x10_trimmed": "9.8 %", "boost_x1000": "14.3 % (8.9 % with --norm-quantile 0.5)",
    "bn_mean_plus_1000": "10.0 %", "bn_var_minus_100": "refused, round 1 failed three times, server exit 2",
    "silent": "every round lasts --round-timeout (600 s)", "ctrl_c": "the server waits the round out (\"deadline in 540s\")",
    "squatter": "the real site refused (exit 3); the run gives up after round 0",
    "swarm": "121 admitted, they fill every selection; 0 rounds trained, server exit 2",
    "dp_delta": "clients train 20 rounds instead of 15: ε = 3.50 at δ = 1e-5 against --max-epsilon 3",
    "dashboard": "the owner gets 503 for 31 s and more", "nan_flags": "13 flags: internal error, tracebacks, rounds NOT APPLIED",
    "min_max_krum": "60.05 % → 52.40 %",
}


def _client_thread(name: str, port: int, data: str, cache: Path, work: Path, outcomes: dict, attack: str | None = None,
                   extra: tuple[str, ...] = ()) -> threading.Thread:
    def run() -> None:
        from fedtl.client.app import ClientApp
        from fedtl.client.config import parse_args

        cfg = parse_args(["--server", f"127.0.0.1:{port}", "--name", name, "--data", data, "--data-cache", str(cache),
                          "--workdir", str(work / name), "--max-wait", "120", "--log-level", "WARNING", *extra], env={})
        app = ClientApp(cfg)
        if attack:
            app.runtime = AttackRuntime(cfg.data, cfg.data_cache, cfg.workdir, app.device, False, cfg.name, attack=attack, clients=len(NAMES))
        outcomes[name] = app.run()

    thread = threading.Thread(target=run, name=f"client-{name}", daemon=True)
    thread.start()
    return thread


def _federation(work: Path, data: str, cache: Path, flags: list[str], attack: str | None = None,
                during: Callable[[int, Path], dict] | None = None, honest: list[str] = NAMES) -> tuple[int, list[dict], dict]:
    """The server and the honest clients (in threads), c0 dishonest when `attack` is given; `during(port, run_dir)` runs
    alongside (the other actors of a row) and returns what it saw. The server's exit code, its round records, the row's
    observations (with each client thread's exit code under "clients")."""
    run_dir = Path(tempfile.mkdtemp(dir=work))
    server, port = start_server(run_dir, [*REFERENCE, "--data", data, *flags], run_dir / "server.log")
    outcomes: dict[str, int] = {}
    seen: dict = {}
    try:
        threads = [_client_thread(n, port, data, cache, run_dir, outcomes, attack if n == "c0" else None) for n in honest]
        if during is not None:
            seen = during(port, run_dir)
        code = server.wait(1800)
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    return code, rounds(run_dir), {**seen, "clients": outcomes, "log_tail": (run_dir / "server.log").read_text()[-1500:]}


def _trained(records: list[dict]) -> list[dict]:
    return [r for r in records if r["round"] >= 1]


def learning(work: Path, data: str, cache: Path, attack: str | None, flags: list[str]) -> dict:
    """One run per seed (a single run's ±3 points would decide a verdict): final accuracies, their mean, what was refused."""
    runs = []
    for seed in SEEDS:
        code, records, seen = _federation(work, data, cache, [*flags, "--seed", str(seed)], attack)
        trained = _trained(records)
        runs.append({"seed": seed, "server_exit": code, "rounds": len(trained), "accuracy": trained[-1]["test_accuracy"] if trained else None,
                     "refused": sum(sum(r.get("rejected", {}).values()) for r in trained), "clients": seen["clients"]})
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    return {"flags": flags, "runs": runs, "server_exit": max(r["server_exit"] for r in runs), "rounds": min(r["rounds"] for r in runs),
            "accuracy": sum(accuracies) / len(accuracies) if len(accuracies) == len(runs) else None,
            "accuracies": accuracies, "refused": sum(r["refused"] for r in runs)}


def silent(work: Path, data: str, cache: Path) -> dict:
    def quiet(port: int, run_dir: Path) -> dict:
        threading.Thread(target=asyncio.run, args=(_silent_client(f"127.0.0.1:{port}", "c3"),), daemon=True).start()
        return {}

    code, records, _ = _federation(work, data, cache, [], during=quiet, honest=NAMES[:3])
    return {"server_exit": code, "rounds": [_round_line(r) for r in _trained(records)]}


def _round_line(r: dict) -> dict:
    return {k: r.get(k) for k in ("round", "seconds", "answered", "selected", "close_reason", "test_accuracy")}


def ctrl_c(work: Path, data: str, cache: Path) -> dict:
    """c3 is a real client process; once it trains in round 2 it gets SIGINT, as a user's Ctrl-C."""
    def interrupt(port: int, run_dir: Path) -> dict:
        log = run_dir / "c3.log"
        proc = Process(["-m", "client", "--server", f"127.0.0.1:{port}", "--name", "c3", "--data", data, "--data-cache", str(cache),
                        "--workdir", str(run_dir / "c3"), "--threads", "1"], log)
        try:
            deadline = time.monotonic() + 900
            while "round 2: training" not in log.read_text() and time.monotonic() < deadline and proc.popen.poll() is None:
                time.sleep(0.05)
            proc.popen.send_signal(signal.SIGINT)
            code = proc.wait(120)
        finally:
            proc.stop()
        said = [line for line in log.read_text().splitlines() if "leaving" in line]
        return {"c3_exit": code, "c3_said": said[-1][-120:] if said else ""}

    code, records, seen = _federation(work, data, cache, [], during=interrupt, honest=NAMES[:3])
    return {"server_exit": code, "rounds": [_round_line(r) for r in _trained(records)], "c3_exit": seen["c3_exit"], "c3_said": seen["c3_said"]}


async def _squat(target: str, name: str, joined: threading.Event, token: str = "") -> str:
    """Join under `name` with a stranger's identity and stay silent; what the server answered."""
    metadata = [("x-fedtl-client", name)] + ([("authorization", f"Bearer {token}")] if token else [])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FederationStub(channel)
        try:
            async for _ in stub.Connect(wire.hello_to_proto(Hello(name, identity="stranger" * 4)), metadata=metadata):
                joined.set()
        except grpc.aio.AioRpcError as exc:
            joined.set()
            return f"{exc.code().name}: {exc.details()}"
    return "joined"


def squatter(work: Path, data: str, cache: Path, tokens: bool) -> dict:
    """A stranger joins first under c3's name and stays silent; then the real sites start. With per-client tokens the
    stranger has none of c3's."""
    flags: list[str] = []
    extra: dict[str, tuple[str, ...]] = {}
    if tokens:
        path = work / "tokens.txt"
        secrets = {n: os.urandom(16).hex() for n in NAMES}
        path.write_text("".join(f"{n} {t}\n" for n, t in secrets.items()))
        flags, extra = ["--tokens-file", str(path)], {n: ("--token", t) for n, t in secrets.items()}
    run_dir = Path(tempfile.mkdtemp(dir=work))
    server, port = start_server(run_dir, [*REFERENCE, "--data", data, *flags], run_dir / "server.log")
    outcomes: dict[str, int] = {}
    answer: dict[str, str] = {}
    try:
        joined = threading.Event()
        threading.Thread(target=lambda: answer.setdefault("squatter", asyncio.run(_squat(f"127.0.0.1:{port}", "c3", joined))), daemon=True).start()
        joined.wait(60)
        threads = [_client_thread(n, port, data, cache, run_dir, outcomes, extra=extra.get(n, ())) for n in NAMES]
        code = server.wait(1800)
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    trained = _trained(rounds(run_dir))
    return {"tokens": tokens, "server_exit": code, "rounds": len(trained), "squatter": answer.get("squatter", "still connected"),
            "real_c3_exit": outcomes.get("c3"), "accuracy": trained[-1]["test_accuracy"] if trained else None}


def _outside_address() -> str:
    """This machine's first non-loopback IPv4 address: joins from it count as another network address than 127.0.0.1's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        return str(s.getsockname()[0])


def swarm(work: Path, data: str, cache: Path, joins: int) -> dict:
    """Once the 4 sites are connected (on loopback), one other address opens `joins` sessions in one burst, before round 1,
    and keeps the joined ones open and silent; the issue's flags: --clients-per-round 4 --round-timeout 30."""
    outside = _outside_address()

    def burst(port: int, run_dir: Path) -> dict:
        outcomes: dict[str, int] = {}
        done = threading.Event()
        log, deadline = run_dir / "server.log", time.monotonic() + 600
        while not all(f"client {n} connected" in log.read_text() for n in NAMES) and time.monotonic() < deadline:
            time.sleep(0.05)

        async def flood() -> None:
            async with grpc.aio.insecure_channel(f"{outside}:{port}") as channel:
                stub = pb_grpc.FederationStub(channel)
                calls = []
                for i in range(joins):
                    call = stub.Connect(wire.hello_to_proto(Hello(f"sybil{i}", identity=f"{i:064d}")), metadata=[("x-fedtl-client", f"sybil{i}")])
                    try:
                        await call.read()
                        outcomes["joined"] = outcomes.get("joined", 0) + 1
                        calls.append(call)  # stays open, reads nothing more, answers nothing
                    except grpc.aio.AioRpcError as exc:
                        outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                done.set()
                await asyncio.Event().wait()

        threading.Thread(target=asyncio.run, args=(flood(),), daemon=True).start()
        done.wait(600)
        return {"joins": dict(outcomes), "from": outside}

    code, records, seen = _federation(work, data, cache, ["--address", "0.0.0.0:0", "--allow-insecure", "--clients-per-round", "4",
                                                          "--round-timeout", "30", "--join-grace", "5"], during=burst)
    trained = _trained(records)
    sybils = sum(1 for r in trained for name in r.get("selected_clients", r.get("clients", [])) if name.startswith("sybil"))
    return {"server_exit": code, "rounds": [_round_line(r) for r in trained], "joins": seen["joins"], "from": seen["from"],
            "sybil_answers": sum(1 for r in trained for name in r.get("clients", []) if name.startswith("sybil")), "sybils_seen": sybils}


def dp_delta(work: Path, data: str, cache: Path) -> dict:
    """Record-level DP at the coordinator's δ = 0.5 against clients whose owners allow ε 3 at their own (default) δ."""
    run_dir = Path(tempfile.mkdtemp(dir=work))
    flags = ["--dp-clip", "1", "--dp-noise", "1", "--dp-delta", "0.5", "--rounds", "30", "--wait-timeout", "60"]
    server, port = start_server(run_dir, [*REFERENCE, "--data", data, *flags], run_dir / "server.log")
    outcomes: dict[str, int] = {}
    try:
        threads = [_client_thread(n, port, data, cache, run_dir, outcomes, extra=("--max-epsilon", "3")) for n in NAMES]
        for thread in threads:
            thread.join(600)
        server.popen.send_signal(signal.SIGTERM)  # every client refused: nothing more to see (the round would wait for them to return)
        code = server.wait(120)
    finally:
        server.stop()
    from fedtl.client.privacy import PrivacyLedger

    spent = {n: PrivacyLedger(run_dir / n).epsilon(1e-5, "rdp") for n in NAMES}
    return {"flags": flags, "clients": outcomes, "epsilon_at_owner_delta": spent, "rounds": len(_trained(rounds(run_dir))), "server_exit": code}


def dashboard(work: Path, idle: int) -> dict:
    """`idle` TCP connections from another address that send nothing, then the owner's requests (with the token) from
    loopback: their status and latency."""
    run_dir = Path(tempfile.mkdtemp(dir=work))
    web = _free_port()
    token = os.urandom(16).hex()
    flags = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", "--min-clients", "1", "--dashboard", f"0.0.0.0:{web}",
             "--dashboard-token", token, "--dashboard-insecure"]
    server, _ = start_server(run_dir, flags, run_dir / "server.log")
    outside = _outside_address()
    sockets, owner = [], []
    try:
        _get(f"http://127.0.0.1:{web}/", token)  # up
        for _ in range(idle):
            sockets.append(socket.create_connection((outside, web)))
        time.sleep(0.5)
        for _ in range(20):
            started = time.monotonic()
            status = _get(f"http://127.0.0.1:{web}/", token)
            owner.append((status, time.monotonic() - started))
    finally:
        for s in sockets:
            s.close()
        server.popen.send_signal(signal.SIGTERM)
        server.wait(60)
        server.stop()
    return {"idle_connections": idle, "from": outside, "owner_status": sorted({s for s, _ in owner}),
            "owner_seconds_max": max(t for _, t in owner), "owner_seconds_median": sorted(t for _, t in owner)[len(owner) // 2]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def nan_flags() -> dict:
    """Every float flag of the server and the client given `nan`, each in a real process: the exit code and the last line."""
    from fedtl.client.config import build_parser as client_parser
    from fedtl.server.flags import build_parser as server_parser

    results = {}
    for program, parser, base in (("server", server_parser(), ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100"]),
                                  ("client", client_parser(), ["--server", "127.0.0.1:1", "--data", "synthetic:100"])):
        flags = sorted({a.option_strings[-1] for a in parser._actions if getattr(a.type, "__name__", "") == "finite_float"})
        for flag in flags:
            done = subprocess.run([sys.executable, "-m", program, *base, flag, "nan"], capture_output=True, text=True, timeout=120,
                                  cwd=HERE.parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"})
            lines = (done.stderr or done.stdout).strip().splitlines()
            results[f"{program} {flag}"] = {"exit": done.returncode, "lines": len(lines), "last": lines[-1][-160:] if lines else ""}
    return results


def min_max_krum() -> dict:
    """From bench/robustness/run's results: multi-krum (and the default) without attack and under min-max, head-only Lite0."""
    cells = json.loads((HERE / "results" / "results.json").read_text())["cells"]
    return {key: round(100 * cells[key]["accuracy"], 2) for key in cells if key.split("|")[-1] in ("none", "min_max")
            and key.split("|")[0] in ("iid:2", "dirichlet:2")}


def rows(work: Path, data: str, cache: Path) -> dict[str, Callable[[], dict]]:
    """Each row of the table: what it runs (flags are the reference run's defaults unless the row names some)."""
    return {
        "honest": lambda: learning(work, data, cache, None, []),
        "honest_plain_fedavg": lambda: learning(work, data, cache, None, ["--norm-quantile", "0"]),
        "sign_flip_x10": lambda: learning(work, data, cache, "sign_flip_x10", []),
        "sign_flip_x10_trimmed": lambda: learning(work, data, cache, "sign_flip_x10", ["--aggregation", "trimmed-mean"]),
        "sign_flip_x10_median": lambda: learning(work, data, cache, "sign_flip_x10", ["--aggregation", "median"]),
        "sign_flip_x10_dnc": lambda: learning(work, data, cache, "sign_flip_x10", ["--aggregation", "dnc", "--byzantine", "1"]),
        "boost_x1000": lambda: learning(work, data, cache, "boost_x1000", []),
        "bn_mean_plus_1000": lambda: learning(work, data, cache, "bn_mean_plus_1000", []),
        "bn_var_minus_100": lambda: learning(work, data, cache, "bn_var_minus_100", []),
        "silent": lambda: silent(work, data, cache),
        "ctrl_c": lambda: ctrl_c(work, data, cache),
        "squatter": lambda: squatter(work, data, cache, tokens=False),
        "squatter_tokens": lambda: squatter(work, data, cache, tokens=True),
        "swarm": lambda: swarm(work, data, cache, 1000),
        "dp_delta": lambda: dp_delta(work, data, cache),
        "dashboard": lambda: dashboard(work, 70),
        "nan_flags": nan_flags,
        "min_max_krum": min_max_krum,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.table")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--only", nargs="*", default=None, help="rerun these rows and keep the rest")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if not ready(a.data):
        return 2
    path = a.out / "table.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    cache = Path.home() / ".cache" / "fedtl"
    with tempfile.TemporaryDirectory() as tmp:
        table = rows(Path(tmp), a.data, cache)
        for key in a.only or list(table):
            started = time.monotonic()
            results["rows"][key] = {**table[key](), "seconds": round(time.monotonic() - started, 1)}
            results["machine"] = machine()
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{key}: {verdict(key, results['rows'])[1]}", flush=True)
    from bench.robustness.report import write_table

    write_table(results, a.out)
    return 0


def _seeds(row: dict) -> str:
    values = row.get("accuracies", [])
    return f" (seeds: {', '.join(f'{100 * v:.1f}' for v in values)})" if len(values) > 1 else ""


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def verdict(key: str, r: dict) -> tuple[bool, str]:
    """Whether the row holds now, and what was measured, in words."""
    row, honest = r[key], r.get("honest", {}).get("accuracy")
    if key in ("honest", "honest_plain_fedavg"):
        cost = "" if key == "honest" or honest is None else f"; the default bound costs {100 * (row['accuracy'] - honest):+.1f} points"
        return row["rounds"] == 6, f"{_pct(row['accuracy'])}{_seeds(row)} after {row['rounds']} rounds{cost}"
    if "accuracy" in row and "server_exit" in row and key not in ("squatter", "squatter_tokens"):
        held = row["server_exit"] == 0 and row["rounds"] == 6 and honest is not None and row["accuracy"] >= honest - NOISE
        refused = f", {row['refused']} updates refused" if row.get("refused") else ""
        return held, f"{_pct(row['accuracy'])}{_seeds(row)} after {row['rounds']} rounds (honest {_pct(honest)}){refused}"
    if key in ("silent", "ctrl_c"):
        closes = ", ".join(f"{x['seconds']:.0f} s {x['close_reason']}" for x in row["rounds"])
        held = row["server_exit"] == 0 and len(row["rounds"]) == 6 and all(x["close_reason"] != "deadline" for x in row["rounds"])
        extra = f"; the client exited {row['c3_exit']}" if key == "ctrl_c" else ""
        return held, f"6 rounds: {closes}{extra}" if held else f"{len(row['rounds'])} rounds: {closes}{extra}"
    if key == "squatter":
        return row["rounds"] == 6, (f"the run trains all {row['rounds']} rounds without the site ({_pct(row['accuracy'])}); the real site "
                                    f"is still refused (exit {row['real_c3_exit']}): without credentials a name is its first user's")
    if key == "squatter_tokens":
        held = row["rounds"] == 6 and row["real_c3_exit"] == 0 and row["squatter"].startswith("UNAUTHENTICATED")
        return held, (f"the stranger is refused ({row['squatter'].split(':', 1)[0]}); the site trains all {row['rounds']} rounds "
                      f"(exit {row['real_c3_exit']})")
    if key == "swarm":
        held = row["server_exit"] == 0 and len(row["rounds"]) == 6 and row["sybil_answers"] == 0
        joins = ", ".join(f"{n} {'joined' if k == 'joined' else 'refused (' + k + ')'}" for k, n in row["joins"].items())
        return held, (f"{joins}; {len(row['rounds'])} rounds trained, {row['sybil_answers']} sybil answers, rounds closing "
                      f"{' or '.join(sorted({x['close_reason'] for x in row['rounds']}))}")
    if key == "dp_delta":
        spent = max(row["epsilon_at_owner_delta"].values())
        held = all(code == 3 for code in row["clients"].values()) and spent == 0
        return held, f"every client refuses the task (exit {sorted(set(row['clients'].values()))}); ε spent at the owner's δ: {spent:g}"
    if key == "dashboard":
        held = row["owner_status"] == [200]
        return held, (f"{row['idle_connections']} idle connections from {row['from']}: the owner gets {row['owner_status']} in "
                      f"{row['owner_seconds_median'] * 1000:.0f} ms (max {row['owner_seconds_max'] * 1000:.0f} ms)")
    if key == "nan_flags":
        bad = [flag for flag, x in row.items() if isinstance(x, dict) and (x["exit"] != 2 or x["lines"] != 1)]
        count = sum(1 for x in row.values() if isinstance(x, dict))
        return not bad, f"{count} float flags: each exits 2 with one line" + (f"; not: {', '.join(bad)}" if bad else "")
    if key == "min_max_krum":  # held by the defaults: the default rule under attack within NOISE of FedAvg without one
        settings = [s for s in ("iid:2", "dirichlet:2") if f"{s}|default|min_max" in row]
        held = bool(settings) and all(row[f"{s}|default|min_max"] >= row[f"{s}|mean|none"] - 100 * NOISE for s in settings)
        text = "; ".join(f"{s}: FedAvg {row.get(f'{s}|mean|none')} % without attack, defaults {row.get(f'{s}|default|min_max')} %, "
                         f"multi-krum {row.get(f'{s}|multi-krum|none')} → {row.get(f'{s}|multi-krum|min_max')} %, "
                         f"dnc {row.get(f'{s}|dnc|none')} → {row.get(f'{s}|dnc|min_max')} %" for s in settings)
        return held, text
    return False, json.dumps(row)[:200]


if __name__ == "__main__":
    raise SystemExit(main())
