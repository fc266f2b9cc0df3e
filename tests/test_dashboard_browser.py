"""The dashboard in a real browser (Playwright driving Debian's chromium) while a real server and three
real clients run five rounds: live updates, reconnection without gaps, a dropped client, one origin."""

from __future__ import annotations

import json
import shutil
import time
from urllib.parse import urlsplit

import pytest
from harness import Federation

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev requirement (make install)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (make test does, as root)")]

TOKEN = "browser-test-token-0123456789"
ROUND_TIMEOUT = 20
# Records, in page time, when each round's row first appears (and how often), and when the stream reconnected.
OBSERVER = """
window.__seen = {}; window.__inserted = {}; window.__reconnectTimes = [];
new MutationObserver((list) => {
  for (const m of list) {
    if (m.type === "attributes") { window.__reconnectTimes.push(Date.now() / 1000); continue; }
    for (const n of m.addedNodes) {
      if (n.nodeType === 1 && n.matches("tr[data-round]")) {
        const r = n.dataset.round;
        window.__inserted[r] = (window.__inserted[r] || 0) + 1;
        if (!(r in window.__seen)) window.__seen[r] = Date.now() / 1000;
      }
    }
  }
}).observe(document, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-reconnects"] });
"""
SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:6000", "--rounds", "5", "--min-clients", "2",
          "--join-grace", "3", "--batch-size", "32", "--round-timeout", str(ROUND_TIMEOUT), "--seed", "3",
          "--dashboard", "0", "--dashboard-token", TOKEN, "--dashboard-stream-seconds", "1.5", "--dashboard-linger", "120"]
CLIENT = ["--data", "synthetic:6000"]


def test_the_page_follows_a_run_live_and_reconnects_without_gaps(federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = federation(SERVER)
    fed.start_server()
    origin = json.loads((fed.run_dir / "server.json").read_text())["dashboard"].rstrip("/")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.add_init_script(OBSERVER)
            page.goto(f"{origin}/?token={TOKEN}")
            page.wait_for_selector("#status.waiting", timeout=30_000)
            waited = page.inner_text("#elapsed")  # the run's clock moves before any round ends (it read 0s for a minute)
            page.wait_for_function("(before) => document.getElementById('elapsed').textContent !== before", arg=waited, timeout=10_000)
            for name in ("a", "b"):
                fed.start_client(name, CLIENT)
            victim = fed.start_client("c", CLIENT, env={"FEDTL_FAULT": "train:150"})  # ~63 batches a round: dies in round 3
            page.wait_for_function("() => /round 1 in progress for \\d+s: \\d\\/\\d answered/.test(document.getElementById('round-sub').textContent)",
                                   timeout=60_000)
            assert victim.wait(180) != 0
            killed = time.time()
            page.wait_for_selector('tr[data-client="c"][data-status="dropped"]', timeout=(ROUND_TIMEOUT + 2) * 1000)
            dropped_after = time.time() - killed
            page.wait_for_selector("#status.completed", timeout=180_000)
            seen, inserted = page.evaluate("window.__seen"), page.evaluate("window.__inserted")
            reconnects = page.evaluate("window.__reconnectTimes")
            snapshots = int(page.evaluate("document.body.dataset.snapshots"))
            rows = page.eval_on_selector_all("#rounds tbody tr", "rows => rows.map(r => Number(r.dataset.round))")
        finally:
            browser.close()
    records = {r["round"]: r for r in fed.rounds()}
    assert sorted(records) == [0, 1, 2, 3, 4, 5] and rows == [0, 1, 2, 3, 4, 5]  # no gap, no duplicate row
    assert all(inserted[str(n)] == 1 for n in range(6)), inserted  # each row inserted once: the replay repeated nothing
    for n in range(1, 6):  # live: each round on the page once its JSONL record is written, and before the next round closes
        assert records[n]["ts"] - 0.05 <= seen[str(n)] < records.get(n + 1, {"ts": float("inf")})["ts"], (n, seen[str(n)] - records[n]["ts"])
    assert snapshots == 1, "reconnections must replay from Last-Event-ID, not start over"
    assert any(records[2]["ts"] < t < records[5]["ts"] for t in reconnects), (reconnects, records[2]["ts"], records[5]["ts"])
    assert dropped_after <= ROUND_TIMEOUT + 2
    assert requests and all(u.startswith(origin + "/") or u.startswith("data:") for u in requests), requests
    host = urlsplit(origin).netloc
    assert all(urlsplit(u).netloc == host for u in requests if not u.startswith("data:"))


def test_the_page_draws_a_cross_site_evaluation_matrix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A standing coordinator's evaluation job on its dashboard: a row per model, a column per site, the accuracies."""
    from fedtl.server.config import parse_args
    from fedtl.server.events import CrossEvaluation, EventBus, RunFinished, RunStarted
    from fedtl.server.observe import Observers

    observers = Observers(parse_args(["--dashboard", "127.0.0.1:0", "--dashboard-token", TOKEN], env={}).observe, tmp_path,
                          tmp_path / "evaluation.json")
    origin = observers.start()["dashboard"].rstrip("/")
    bus = EventBus()
    for sink in observers.sinks:
        bus.subscribe(sink)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"{origin}/?token={TOKEN}")
                bus.publish(RunStarted("job-0003", 0, False, 0, "cross-site evaluation", "127.0.0.1:1"))
                page.wait_for_selector("#conn.live", timeout=30_000)
                assert page.is_hidden("#matrix-section")  # nothing to show before the job's matrix
                accuracy = {"job-0001": {"a": 0.5, "b": 0.25}, "job-0001+a": {"a": 0.75}}  # b did not evaluate a's model
                bus.publish(CrossEvaluation("job-0003", ("job-0001", "job-0001+a"), ("a", "b"), accuracy))
                bus.publish(RunFinished("completed", 0, "2 site(s) answered", None))
                page.wait_for_selector("#matrix tr[data-model='job-0001+a']", timeout=30_000)
                rows = page.eval_on_selector_all("#matrix tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
                assert rows == [["model", "a", "b"], ["job-0001", "50.00%", "25.00%"], ["job-0001+a", "75.00%", "–"]]
                assert page.inner_text("#matrix-job") == "job-0003"
                page.reload()  # the snapshot carries it too
                page.wait_for_selector("#matrix tr[data-model='job-0001']", timeout=30_000)
            finally:
                browser.close()
    finally:
        observers.stop()
