"""One server holds 200 connected clients with bounded threads and memory, and runs rounds of 50."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.load_clients import run_clients


def _proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    fields["sockets"] = sum(1 for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
    return fields


@pytest.mark.multiprocess  # the server's threads, sockets and memory, measured as a process
def test_200_connected_clients_50_per_round(federation) -> None:  # type: ignore[no-untyped-def]
    fed = federation(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:200", "--rounds", "3",
                      "--min-clients", "200", "--clients-per-round", "50", "--join-grace", "2", "--keep-round-models",
                      "--round-timeout", "60", "--finish-grace", "10", "--eval-every", "0", "--weighting", "examples",
                      "--norm-quantile", "0"])  # the exact weighted mean is checked
    server = fed.start_server()
    pid = server.popen.pid
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and server.popen.poll() is None:
            try:
                samples.append(_proc_status(pid))
            except (OSError, ValueError):
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    clients = asyncio.run(asyncio.wait_for(run_clients(f"127.0.0.1:{fed.port}", 200), timeout=240))
    stop.set()
    watcher.join()
    assert server.wait(60) == 0, server.log[-3000:]
    assert time.monotonic() - started < 240

    assert all(c.finished for c in clients), "every client was told the run is over"
    rounds = {r["round"]: r for r in fed.rounds()}
    assert [rounds[i]["answered"] for i in (1, 2, 3)] == [50, 50, 50]
    peak = max(samples, key=lambda s: s["sockets"])
    assert peak["sockets"] >= 200, peak  # really 200 connections, not one shared one
    assert max(s["Threads"] for s in samples) <= 40, "threads must not grow with clients"
    assert max(s["VmHWM"] for s in samples) < 1_500_000, "server peak RSS (kB) out of bounds"

    # the aggregate of round 1 is exactly the weighted mean of the 50 accepted updates
    accepted = set(rounds[1]["clients"])
    sent = [(s.update, s.num_examples) for c in clients if c.name in accepted for s in c.sent if s.round == 1]
    assert len(sent) == 50
    w0, w1 = fed.model(0), fed.model(1)
    total = sum(n for _, n in sent)
    for name in ("conv1.0.weight", "fc.bias"):
        expected = w0[name].double() + sum(u[name].double() * n for u, n in sent) / total
        assert torch.allclose(w1[name].double(), expected, atol=1e-7), name
