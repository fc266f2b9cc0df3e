"""Run a whole federation on this machine: one server process and N client processes.

`python -m scripts.local_federation --clients 3 --run-dir runs/demo -- SERVER FLAGS -- CLIENT FLAGS`
The server listens on a free loopback port; every client gets its own name and work directory.
Output of all processes is interleaved; the exit code is the server's (or the first failing
client's). When every client has exited with an error, the server is stopped and the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _pump(stream, prefix: str, sink) -> None:  # type: ignore[no-untyped-def]
    for line in iter(stream.readline, ""):
        sink.write(f"{prefix}{line}" if prefix else line)
        sink.flush()


def wait_for_port(run_dir: Path, server: subprocess.Popen, timeout: float = 300.0) -> int:
    """The server writes RUN_DIR/server.json (with its pid) once it listens; --address 127.0.0.1:0 picks a free port."""
    info = run_dir / "server.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with code {server.returncode} before listening")
        try:
            written = json.loads(info.read_text())
            if written.get("pid") == server.pid:  # not a file left by an earlier run
                return int(written["port"])
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server did not write {info} within {timeout:g}s")


def _wait_for_server(server: subprocess.Popen, clients: list[subprocess.Popen], poll: float = 0.5) -> int:
    """The server's exit code; but when every client has exited with an error, nothing can come of waiting:
    say so, stop the server, and return the first client's code."""
    while True:
        try:
            return server.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass
        codes = [c.poll() for c in clients]
        if clients and all(code not in (None, 0) for code in codes):
            print(f"local federation: all {len(clients)} clients exited with errors (exit codes {codes}); stopping the server. "
                  "The clients' lines above say why.", file=sys.stderr, flush=True)
            server.send_signal(signal.SIGTERM)
            server.wait()
            return next(code for code in codes if code) or 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, server_args, client_args = argv, [], []
    if "--" in argv:
        cut = argv.index("--")
        own, rest = argv[:cut], argv[cut + 1 :]
        if "--" in rest:
            cut = rest.index("--")
            server_args, client_args = rest[:cut], rest[cut + 1 :]
        else:
            server_args = rest
    p = argparse.ArgumentParser(prog="python -m scripts.local_federation")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--threads-per-client", type=int, default=1)
    a = p.parse_args(own)
    logs = a.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    python = sys.executable
    server = subprocess.Popen([python, "-m", "server", "--address", "127.0.0.1:0", "--run-dir", str(a.run_dir),
                               "--min-clients", str(a.clients), *server_args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threads = [threading.Thread(target=_pump, args=(server.stdout, "", sys.stdout), daemon=True)]
    threads[0].start()
    clients: list[subprocess.Popen] = []
    try:
        port = wait_for_port(a.run_dir, server)
        for i in range(a.clients):
            name = f"client-{i}"
            with (logs / f"{name}.log").open("w") as log:  # clients log to files, so the server's round lines stand out
                clients.append(subprocess.Popen([python, "-m", "client", "--server", f"127.0.0.1:{port}", "--name", name,
                                                 "--workdir", str(a.run_dir / name), "--threads", str(a.threads_per_client),
                                                 *client_args], env=env, stdout=log, stderr=subprocess.STDOUT))
        print(f"local federation: {a.clients} clients on 127.0.0.1:{port}; their logs: {logs}/client-*.log", flush=True)
        code = _wait_for_server(server, clients)
        for proc in clients:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
        for t in threads:
            t.join(timeout=5)
        failing = [(i, c.returncode) for i, c in enumerate(clients) if c.returncode not in (0, None)]
        for i, returned in failing:
            tail = (logs / f"client-{i}.log").read_text(errors="replace").splitlines()[-5:]
            print(f"client-{i} exited with {returned}; the end of {logs}/client-{i}.log:", *("  " + line for line in tail),
                  sep="\n", file=sys.stderr)
        return code or (failing[0][1] if failing else 0)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"local federation failed: {exc}", file=sys.stderr)
        return server.poll() or 1
    finally:
        for proc in [server, *clients]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [server, *clients]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
