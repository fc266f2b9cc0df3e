"""Observability without a network: the dashboard's view and journal, metrics, TensorBoard files, JSON logs,
and the flags' rules. (test_observe_e2e.py checks the same against a real server and clients.)"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedtl.common.errors import ConfigError
from fedtl.common.logs import CURRENT_EVENT, JsonFormatter
from fedtl.server import events as ev
from fedtl.server.observe import settings
from fedtl.server.observe.metrics import Metrics
from fedtl.server.observe.view import RunView
from fedtl.server.records import RoundRecord


def _settings(argv: list[str], tls: bool = False, insecure: bool = False, env: dict | None = None) -> settings.ObserveSettings:
    p = argparse.ArgumentParser()
    settings.add_flags(p.add_argument_group())
    return settings.from_namespace(p.parse_args(argv), env or {}, tls=tls, allow_insecure=insecure)


def _record(n: int, **kw: object) -> RoundRecord:
    base = dict(round=n, rounds=3, selected=2, answered=2, examples=600, train_loss=2.0 - n / 10, test_loss=2.1 - n / 10,
                test_accuracy=0.1 * n, bytes_down=1000 * n, bytes_up=500 * n, seconds=0.5 + n, phases={"train_and_collect": 0.4, "evaluate": 0.1})
    base.update(kw)
    return RoundRecord(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- flags


def test_endpoints_default_to_loopback_and_a_token_is_made_when_none_is_given() -> None:
    s = _settings(["--dashboard", "0", "--metrics", "9100"])
    assert s.dashboard == settings.Endpoint("127.0.0.1", 0) and s.metrics == settings.Endpoint("127.0.0.1", 9100)
    assert s.token_generated and settings.TOKEN.match(s.token)
    given = _settings(["--dashboard", "8080"], env={settings.TOKEN_ENV: "x" * 20})
    assert given.token == "x" * 20 and not given.token_generated
    assert _settings([]).token == "" and not _settings([]).web


@pytest.mark.parametrize("argv, words", [
    (["--dashboard", "0.0.0.0:8080"], "reachable from other machines"),
    (["--metrics", "[::]:9100"], "reachable from other machines"),
    (["--dashboard", "host:"], "use PORT or HOST:PORT"),
    (["--dashboard", "70000"], "use PORT or HOST:PORT"),
    (["--dashboard", "8080", "--metrics", "8080"], "same address"),
    (["--dashboard", "8080", "--dashboard-token", "short"], "16-256 characters"),
    (["--dashboard", "8080", "--dashboard-token", "a;b" * 8], "16-256 characters"),
    (["--dashboard-linger", "-1"], "must be >= 0"),
])
def test_bad_observability_flags_get_one_clear_line(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _settings(argv)


def test_other_addresses_need_tls_or_the_insecure_flag() -> None:
    assert _settings(["--dashboard", "0.0.0.0:8080"], tls=True).dashboard.host == "0.0.0.0"  # type: ignore[union-attr]
    assert _settings(["--metrics", "0.0.0.0:9100"], insecure=True).metrics.port == 9100  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- the view


def _fold(view: RunView) -> None:
    view(ev.RunStarted("run1", 3, False, 0, "mean", "127.0.0.1:5"))
    view(ev.ClientJoined("a", "host-a", "cpu", 0, 2, False, 1))
    view(ev.ClientJoined("b", "host-b", "cpu", 1, 2, False, 2))
    view(ev.EvaluationDone(0, 2.3, 0.1, 100, 0.2, False, None))
    view(ev.RoundOpened(1, 3, 1, ("a", "b"), 2, 2, 60.0, 2))
    view(ev.UpdateAccepted(1, "a", 300, 500, 1.9, 0.7))
    view(ev.ClientLeft("b", 1, True))
    view(ev.RoundClosed(_record(1, answered=1, rejected={"aborted": 1})))


def test_the_view_folds_events_into_the_runs_state(tmp_path: Path) -> None:
    view = RunView(tmp_path, tmp_path / "final.safetensors")
    _fold(view)
    seq, body = view.snapshot()
    state = json.loads(body)
    assert seq == view.seq and [r["round"] for r in state["rounds"]] == [0, 1]
    assert state["rounds"][0]["test_accuracy"] == 0.1 and state["rounds"][1]["rejected"] == {"aborted": 1}
    a, b = state["clients"]
    assert (a["name"], a["result"], a["examples"], a["train_loss"], a["round"]) == ("a", "accepted", 300, 1.9, 1)
    assert (b["name"], b["status"], b["connected"]) == ("b", "dropped", False) and "round 1" in b["reason"]
    assert state["run"]["completed"] == 1 and state["run"]["connected"] == 1 and state["run"]["current"] is None
    assert "NaN" not in body  # nan (nothing measured) is null: the browser's JSON.parse refuses NaN


def test_catching_up_replays_exactly_the_missed_deltas_or_asks_for_a_snapshot(tmp_path: Path) -> None:
    view = RunView(tmp_path, tmp_path / "f", journal=8)
    view(ev.RunStarted("run1", 3, False, 0, "mean", ""))
    mark = view.seq
    view(ev.RoundClosed(_record(1)))
    missed = view.since(mark)
    assert missed is not None and [kind for _, kind, _ in missed] == ["round", "run"]
    assert [i for i, _, _ in missed] == list(range(mark + 1, view.seq + 1))
    assert view.since(view.seq) == []
    assert view.since(view.seq + 5) is None  # an id from an earlier server process
    for n in range(2, 8):
        view(ev.RoundClosed(_record(n)))
    assert view.since(mark) is None  # fell out of the journal: a snapshot, never a gap
    assert view.since(view.seq - 3) is not None


def test_listeners_hear_of_every_change_and_can_stop_listening(tmp_path: Path) -> None:
    view, heard = RunView(tmp_path, tmp_path / "f"), []
    stop = view.listen(lambda: heard.append(1))
    view(ev.RunStarted("r", 1, False, 0, "mean", ""))
    view(ev.CheckpointWritten(0, "/x", 10))
    stop()
    view(ev.RoundClosed(_record(1)))
    assert len(heard) == 2


def test_text_from_the_wire_is_capped_in_the_view(tmp_path: Path) -> None:
    view = RunView(tmp_path, tmp_path / "f")
    view(ev.UpdateRefused("evil", "non_finite", "<script>" + "x" * 10_000))
    row = json.loads(view.snapshot()[1])["clients"][0]
    assert len(row["reason"]) <= 300 and row["result"] == "refused"


# ---------------------------------------------------------------------------------------------- metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metric_counters_are_the_sums_of_the_round_records() -> None:
    m = Metrics()
    m(ev.RunStarted("r", 3, False, 0, "mean", ""))
    records = [_record(1, rejected={"non_finite": 1}), _record(2), _record(3, epsilon=1.5, client_eval_accuracy=0.4)]
    for r in records:
        if r.round == 3:
            assert not any(name == "fl_privacy_epsilon" for name, _ in _samples(m)), "no ε yet: absent, not a 0 (perfect privacy)"
        m(ev.RoundClosed(r))
    m(ev.ClientJoined("a", "h", "cpu", None, None, False, 4))
    s = _samples(m)
    assert s[("fl_rounds_completed_total", ())] == 3
    assert s[("fl_received_bytes_total", ())] == sum(r.bytes_up for r in records)
    assert s[("fl_sent_bytes_total", ())] == sum(r.bytes_down for r in records)
    assert s[("fl_client_updates_total", (("result", "accepted"),))] == sum(r.answered for r in records)
    assert s[("fl_client_update_refusals_total", (("reason", "non_finite"),))] == 1
    assert s[("fl_round_duration_seconds_count", ())] == 3 and math.isclose(s[("fl_round_duration_seconds_sum", ())], 1.5 + 2.5 + 3.5)
    assert s[("fl_round_phase_duration_seconds_count", (("phase", "evaluate"),))] == 3
    assert s[("fl_global_test_accuracy", ())] == pytest.approx(0.3) and s[("fl_privacy_epsilon", ())] == 1.5
    assert s[("fl_clients_connected", ())] == 4 and s[("fl_round", ())] == 3


def test_labels_come_from_a_closed_set_however_many_reasons_there_are() -> None:
    m = Metrics()
    odd = {f"reason_{i}": 1 for i in range(100)} | {"Bad Label!": 1, "x" * 200: 1}
    m(ev.RoundClosed(_record(1, rejected=odd)))
    reasons = {dict(k[1])["reason"] for k in _samples(m) if k[0] == "fl_client_update_refusals_total"}
    assert len(reasons) <= 33 and "other" in reasons and "Bad Label!" not in reasons


# ---------------------------------------------------------------------------------------------- TensorBoard


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Scalars from TensorBoard event files: TFRecord framing (length, crc, data, crc) around Event protos."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_tensorboard_gets_every_rounds_scalars_flushed(tmp_path: Path) -> None:
    from fedtl.server.observe.tensorboard import TensorBoardSink, scalars

    sink = TensorBoardSink(tmp_path / "tb")
    sink(ev.RunStarted("r", 2, False, 0, "mean", ""))
    sink(ev.EvaluationDone(0, 2.3, 0.1, 100, 0.2, False, None))
    records = [_record(1), _record(2, epsilon=0.5)]
    for r in records:
        sink(ev.RoundClosed(r))
    sink._io.submit(lambda: None).result()  # the writes are queued on the sink's own thread
    got = read_scalars(tmp_path / "tb")  # read before close: each round was flushed as it closed
    assert got["test/accuracy"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.2})
    assert got["bytes/up"] == {1: 500.0, 2: 1000.0} and got["privacy/epsilon"] == {2: 0.5}
    assert set(scalars(records[0])) <= set(got)
    sink.close()


# ---------------------------------------------------------------------------------------------- JSON logs


def test_json_log_lines_carry_the_event_and_its_fields() -> None:
    fmt = JsonFormatter("server")
    record = logging.LogRecord("fedtl.rounds", logging.INFO, __file__, 1, "round %d done", (1,), None)
    token = CURRENT_EVENT.set(ev.RoundClosed(_record(1), ts=5.0))
    try:
        line = json.loads(fmt.format(record))
    finally:
        CURRENT_EVENT.reset(token)
    assert line["message"] == "round 1 done" and line["level"] == "INFO" and line["event"] == "RoundClosed"
    assert line["fields"]["record"]["test_accuracy"] == pytest.approx(0.1) and line["fields"]["record"]["epsilon"] is None
    plain = json.loads(fmt.format(logging.LogRecord("x", logging.WARNING, __file__, 1, "a\nb \x00", (), None)))
    assert "event" not in plain and plain["message"] == "a\nb \x00" and plain["process"] == "server"


# ---------------------------------------------------------------------------------------------- progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_pipe_is_a_line_at_most_every_10_seconds(caplog: pytest.LogCaptureFixture) -> None:
    import io

    from fedtl.common.progress import Progress

    clock, out = _Clock(), io.StringIO()
    caplog.set_level(logging.INFO, "fedtl.progress")
    p = Progress("round 1: training", 1000, " batches", stream=out, tty=False, clock=clock)
    for step in range(1, 1001):
        clock.now = step * 0.1  # 100 s in all
        p.update(step, "loss 1.0")
    p.close()
    times = [r.created for r in caplog.records]
    lines = [r.getMessage() for r in caplog.records]
    assert 9 <= len(lines) <= 11 and out.getvalue() == "" and not any("\r" in line for line in lines)
    assert "round 1: training 10% (100/1000 batches" in lines[0] and lines[-1].startswith("round 1: training 100%")
    assert times == sorted(times)


def test_progress_on_a_terminal_redraws_one_bar_and_quick_phases_print_nothing(caplog: pytest.LogCaptureFixture) -> None:
    import io

    from fedtl.common.progress import Progress

    clock, out = _Clock(), io.StringIO()
    quick = Progress("evaluation", 10, stream=out, tty=True, clock=clock)
    for step in range(1, 11):
        clock.now = step * 0.05
        quick.update(step)
    quick.close()
    assert out.getvalue() == ""
    clock.now, bar = 0.0, Progress("downloading trainable weights", 4e6, "B", stream=out, tty=True, clock=clock)
    for step in range(1, 41):
        clock.now = step * 0.1
        bar.update(step * 1e5)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "\r" in text and "[" + "#" * 28 + "]" in text
    assert "100% (4.0M/4.0MB" in text and not caplog.records


def test_the_printed_dashboard_link_is_one_a_person_can_open(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtl.server.observe import shown_url

    monkeypatch.delenv("FEDTL_DASHBOARD_URL", raising=False)
    assert shown_url("http://127.0.0.1:8080/") == ("http://127.0.0.1:8080/", "")
    url, where = shown_url("http://0.0.0.0:8080/")  # inside a container: 0.0.0.0 opens nothing
    assert url == "http://localhost:8080/" and "docker compose port server 8080" in where
    assert shown_url("https://[::]:9000/")[0] == "https://localhost:9000/"
    monkeypatch.setenv("FEDTL_DASHBOARD_URL", "http://127.0.0.1:49153/")
    assert shown_url("http://0.0.0.0:8080/") == ("http://127.0.0.1:49153/", "")
