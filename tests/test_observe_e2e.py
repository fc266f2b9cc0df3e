"""A real server with the dashboard, metrics, TensorBoard and JSON logs, and two real clients: every figure the
endpoints serve equals the round log's, and every access rule holds on the wire."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import ROOT, Federation
from prometheus_client.parser import text_string_to_metric_families
from test_observe import read_scalars

pytestmark = pytest.mark.multiprocess  # the server's whole stderr is JSON lines, a real SIGTERM ends its linger
TOKEN = "test-token-0123456789abcdef"
ROUNDS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("observed")
    fed = Federation(folder, ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--rounds", str(ROUNDS),
                              "--min-clients", "2", "--batch-size", "32", "--dashboard", "0", "--dashboard-token", TOKEN,
                              "--tensorboard", str(folder / "tb"), "--dashboard-linger", "120", "--log-format", "json"])
    try:
        fed.start_server()
        for name in ("a", "b"):
            fed.start_client(name, ["--data", "synthetic:600"])
        fed.server.wait_for("the dashboard stays up", timeout=120)  # type: ignore[union-attr]
        info = json.loads((fed.run_dir / "server.json").read_text())
        yield fed, urlsplit(info["dashboard"])
    finally:
        fed.close()


def _get(url, path: str, headers: dict | None = None, method: str = "GET") -> http.client.HTTPResponse:  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request(method, path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    return conn.getresponse()


def _metrics(url) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    text = _get(url, "/metrics").read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_equal_the_round_log(run) -> None:  # type: ignore[no-untyped-def]
    fed, url = run
    records = [r for r in fed.rounds() if r["round"] > 0]
    m = _metrics(url)
    assert len(records) == ROUNDS and m[("fl_rounds_completed_total", ())] == ROUNDS
    assert m[("fl_received_bytes_total", ())] == sum(r["bytes_up"] for r in records)
    assert m[("fl_sent_bytes_total", ())] == sum(r["bytes_down"] for r in records)
    assert m[("fl_client_updates_total", (("result", "accepted"),))] == sum(r["answered"] for r in records)
    assert m[("fl_examples_trained_total", ())] == sum(r["examples"] for r in records)
    assert m[("fl_round_duration_seconds_sum", ())] == pytest.approx(sum(r["seconds"] for r in records))
    assert m[("fl_global_test_accuracy", ())] == pytest.approx(records[-1]["test_accuracy"])
    assert m[("fl_run_up", ())] == 0 and m[("fl_clients_connected", ())] == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus (make test does, as root)")
def test_metrics_pass_promtool(run) -> None:  # type: ignore[no-untyped-def]
    _, url = run
    body = _get(url, "/metrics").read()
    done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_tensorboard_scalars_equal_the_round_log(run) -> None:  # type: ignore[no-untyped-def]
    fed, _ = run
    scalars = read_scalars(fed.folder / "tb")
    for r in fed.rounds():
        assert scalars["test/accuracy"][r["round"]] == pytest.approx(r["test_accuracy"], rel=1e-6)
        if r["round"]:
            assert scalars["bytes/up"][r["round"]] == r["bytes_up"] and scalars["round/seconds"][r["round"]] == pytest.approx(r["seconds"])


def test_json_logs_carry_each_rounds_event_and_figures(run) -> None:  # type: ignore[no-untyped-def]
    fed, _ = run
    lines = [json.loads(line) for line in fed.server.log.splitlines() if line.strip()]  # every line is one JSON object
    closed = {line["fields"]["record"]["round"]: line["fields"]["record"] for line in lines if line.get("event") == "RoundClosed"}
    for r in fed.rounds()[1:]:
        assert closed[r["round"]]["test_accuracy"] == pytest.approx(r["test_accuracy"])
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert all("\r" not in fed.clients[name].log for name in ("a", "b"))  # progress in a pipe: lines, never a bar


def test_the_state_and_the_event_stream_hold_every_round(run) -> None:  # type: ignore[no-untyped-def]
    fed, url = run
    state = json.loads(_get(url, "/api/state").read())
    assert [r["round"] for r in state["rounds"]] == list(range(ROUNDS + 1)) and state["run"]["status"] == "completed"
    assert {c["name"] for c in state["clients"]} == {"a", "b"}
    response = _get(url, "/events")
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    head = response.read1(1 << 20).decode()
    while "event: snapshot" not in head or not head.endswith("\n\n"):
        head += response.read1(1 << 20).decode()
    seq = int(head.split("id: ")[1].split("\n")[0])
    response.close()
    replay = _get(url, "/events", {"Last-Event-ID": str(seq - 2)})
    text = replay.read1(1 << 16).decode()
    while text.count("\n\n") < 3:
        text += replay.read1(1 << 16).decode()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids[:2] == [seq - 1, seq] and "event: snapshot" not in text  # exactly the missed deltas, not a snapshot
    replay.close()


@pytest.mark.parametrize("path", ["/", "/api/state", "/events", "/metrics", "/static/dashboard.js"])
def test_every_route_needs_the_token(run, path: str) -> None:  # type: ignore[no-untyped-def]
    _, url = run
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", path)
    answer = conn.getresponse()
    assert answer.status == 401 and answer.getheader("www-authenticate", "").startswith("Bearer")
    assert _get(url, path, {"Authorization": "Bearer wrong-token-0123456789"}).status == 403
    assert _get(url, path, method="POST").status == 405
    assert _get(url, path, {"Host": "rebound.example:80"}).status == 421
    assert answer.getheader("x-content-type-options") == "nosniff" and "default-src 'none'" in answer.getheader("content-security-policy")


def test_the_printed_link_trades_the_token_for_a_cookie(run) -> None:  # type: ignore[no-untyped-def]
    _, url = run
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"/?token={TOKEN}")
    answer = conn.getresponse()
    cookie = answer.getheader("set-cookie")
    answer.read()
    assert answer.status == 303 and answer.getheader("location") == "/" and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    conn.request("GET", "/api/state", headers={"Cookie": cookie.split(";")[0]})
    assert conn.getresponse().status == 200


def test_metrics_take_the_token_as_a_query_parameter_too(run) -> None:  # type: ignore[no-untyped-def]
    _, url = run
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    for token, status in ((TOKEN, 200), ("wrong-token-0123456789", 403)):
        conn.request("GET", f"/metrics?token={token}")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == status
    conn.request("GET", f"/api/state?token={TOKEN}")  # pages do not: a token in a page URL ends up in histories and logs
    assert conn.getresponse().status == 401


def test_at_most_16_event_streams(run) -> None:  # type: ignore[no-untyped-def]
    _, url = run
    streams = [_get(url, "/events") for _ in range(16)]
    assert all(s.status == 200 for s in streams)
    refused = _get(url, "/events")
    assert refused.status == 503 and refused.getheader("retry-after")
    streams.pop().close()
    deadline = time.monotonic() + 60  # the slot comes back once the server notices the closed connection
    while (again := _get(url, "/events")).status != 200 and time.monotonic() < deadline:
        again.close()
        time.sleep(0.1)
    assert again.status == 200
    for s in [*streams, again]:
        s.close()


def test_sigterm_ends_the_linger_at_once(run) -> None:  # type: ignore[no-untyped-def]
    fed, _ = run
    fed.server.signal(signal.SIGTERM)
    assert fed.server.wait(15) == 0


def test_a_taken_port_fails_before_any_data_is_loaded(tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "server", "--run-dir", str(tmp_path), "--data", "synthetic:60", "--model",
                               "tiny_cnn", "--weights", "none", "--dashboard", str(port)], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)
    assert done.returncode == 2 and f"--dashboard 127.0.0.1:{port}: cannot listen there" in done.stderr
