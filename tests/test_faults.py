"""Fault injection: clients killed at each phase, the server killed and restarted between and inside rounds,
connections cut, graceful stops. Every run must end with the model an uninterrupted run gives (same seed, same
clients): nothing partial, duplicated or stale ever reaches the aggregate.

What is killed (kill -9) or signalled (SIGTERM) is a real process; its peers run in threads of this process
(tests/inprocess_federation.py: the same server and client code over real gRPC, without the start-up cost of a
process each), and so do the scenarios that need no process at all. Threads and processes compute the same model."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch
from harness import Federation
from inprocess_federation import VANISHED, InProcessFederation
from tcp_proxy import TcpProxy

from fedtl.common import checkpoint
from fedtl.server.clock import ManualClock

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--rounds", "3", "--min-clients", "3",
          "--batch-size", "32", "--lr", "0.05", "--join-grace", "1", "--keep-round-models", "--chunk-bytes", "4096",
          "--round-timeout", "60", "--finish-grace", "5", "--seed", "7"]
# A killed (and restarted) client or server resumes its round and the run ends with the reference model: the quorum is all
# three, so a round waits for the one that restarts (by default two of three close it after the straggler wait)
EVERYONE = [*SERVER, "--min-fit-clients", "3"]
CLIENT = ["--data", "synthetic:600", "--chunk-bytes", "4096"]
NAMES = ["c0", "c1", "c2"]


def _final(fed: Federation) -> dict[str, torch.Tensor]:
    return dict(checkpoint.load_tensors(fed.run_dir / "final_model.safetensors").tensors)


def _assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].double(), b[name].double(), rtol=0, atol=1e-7), name


def _assert_rounds_once(fed: Federation) -> None:
    assert [r["round"] for r in fed.rounds()] == [0, 1, 2, 3], "a round was skipped or logged twice"


def _finish(fed: Federation, timeout: float = 180) -> None:
    assert fed.server is not None
    assert fed.server.wait(timeout) == 0, fed.server.log[-3000:]
    for name, proc in fed.clients.items():
        assert proc.wait(60) == 0, f"{name}:\n{proc.log[-3000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The uninterrupted run every faulty run must reproduce (in threads: processes compute the very same model)."""
    fed = InProcessFederation(tmp_path_factory.mktemp("reference"), EVERYONE)
    try:
        fed.start_server()
        for name in NAMES:
            fed.start_client(name, CLIENT)
        _finish(fed)
        return _final(fed)
    finally:
        fed.close()


@pytest.mark.multiprocess
@pytest.mark.parametrize("phase, nth", [("download", 2), ("train", 10), ("upload", 2)])
def test_client_killed_in_each_phase_leaves_no_trace(inprocess_federation, reference, phase: str, nth: int) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(EVERYONE)
    fed.start_server()
    victim = fed.start_client("c0", CLIENT, env={"FEDTL_FAULT": f"{phase}:{nth}"}, process=True)  # kill -9 at the fault point
    for name in NAMES[1:]:
        fed.start_client(name, CLIENT)
    assert victim.wait(120) == -signal.SIGKILL, victim.log[-2000:]
    fed.server.wait_for("client c0 disconnected")
    fed.start_client("c0", CLIENT)  # restarted: rejoins, keeps its partition, picks its task up again
    _finish(fed)
    _assert_rounds_once(fed)
    _assert_same_model(_final(fed), reference)
    if phase == "upload":
        counted = [r["rejected"] for r in fed.rounds() if r["rejected"]]
        assert any(c.get("aborted") or c.get("truncated") for c in counted), f"the cut-off upload was not counted: {counted}"
        assert all(r["attempt"] == 1 for r in fed.rounds()[1:]), "the restarted client should resume its round, not force a retry"
    joins = re.findall(r"client c0 connected \(.*?\)( partition \d+/3)?", fed.server.log)
    assert len(joins) == 2 and joins[1] and joins[1] == (joins[0] or joins[1]), joins  # the restarted client keeps its shard


@pytest.mark.multiprocess
@pytest.mark.parametrize("when", ["inside", "between"])
def test_server_killed_and_restarted_resumes_to_the_same_model(inprocess_federation, reference, when: str) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(EVERYONE)
    first = fed.start_server(process=True)
    for name in NAMES:
        fed.start_client(name, CLIENT)
    if when == "inside":
        fed.clients["c1"].wait_for("round 2: sent")  # some round-2 updates are already folded in
    else:
        first.wait_for("round 1/3 |")  # the log line is written; the checkpoint may or may not be
    first.kill()
    second = fed.restart_server(process=True)
    second.wait_for("resuming run")
    _finish(fed)
    _assert_rounds_once(fed)
    _assert_same_model(_final(fed), reference)
    for name in NAMES:
        assert "waiting for the server" in fed.clients[name].log  # they reconnected on their own


@pytest.mark.multiprocess
def test_server_killed_before_round_1_resumes_the_same_run_at_round_0(inprocess_federation, reference) -> None:  # type: ignore[no-untyped-def]
    """Only round 0's checkpoint exists (also what a kill between round 1's log line and its checkpoint leaves):
    the restart is a resume (same run id, one round-0 record), not a new run that sets the old one aside."""
    fed = inprocess_federation(EVERYONE)
    first = fed.start_server(process=True)
    first.wait_for("waiting for clients")  # round 0's checkpoint and record are written before the wait
    run_id = re.search(r"run (\w+): 3 rounds", first.log).group(1)
    first.kill()
    second = fed.restart_server(process=True)
    second.wait_for(f"resuming run {run_id} after round 0/3")
    for name in NAMES:
        fed.start_client(name, CLIENT)
    _finish(fed)
    _assert_rounds_once(fed)
    _assert_same_model(_final(fed), reference)
    assert not (fed.run_dir / "previous").exists() and not list(fed.run_dir.glob("rounds.*.previous.jsonl"))


def test_connections_cut_mid_round_change_nothing(inprocess_federation, reference) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(EVERYONE)
    fed.start_server()
    with TcpProxy(("127.0.0.1", fed.port)) as proxy:
        for name in NAMES:
            fed.start_client(name, CLIENT, server=f"127.0.0.1:{proxy.port}")
        fed.clients["c2"].wait_for("round 2: training")
        proxy.cut()  # every TCP connection through the proxy is reset at once
        _finish(fed)
    _assert_rounds_once(fed)
    _assert_same_model(_final(fed), reference)
    log = fed.server.log
    # each client lost its session once: noticed as a disconnect, or replaced by its own reconnection
    assert proxy.cuts == 1 and log.count("disconnected") + log.count("replacing its previous session") >= 6


@pytest.mark.multiprocess
def test_sigterm_on_the_server_stops_cleanly_and_the_run_resumes_later(inprocess_federation, reference) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(EVERYONE)
    first = fed.start_server(process=True)  # a real SIGTERM
    for name in NAMES:
        fed.start_client(name, CLIENT)
    fed.clients["c0"].wait_for("round 2: training")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert "server stopped (SIGTERM)" in first.log
    for name in NAMES:  # a paused run: clients wait for the server instead of exiting
        fed.clients[name].wait_for("waiting for the server")
        assert fed.clients[name].poll() is None
    assert any("the server paused the run" in fed.clients[name].log for name in NAMES)
    assert [r["round"] for r in fed.rounds()] == [0, 1]
    fed.restart_server(process=True)  # the same clients come back on their own and finish the run
    _finish(fed)
    for name in NAMES:
        assert "run is over" in fed.clients[name].log
    _assert_rounds_once(fed)
    _assert_same_model(_final(fed), reference)


def test_clients_of_a_paused_run_give_up_after_max_wait_with_an_error(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*SERVER, "--rounds", "3", "--min-clients", "1"])
    first = fed.start_server()
    client = fed.start_client("c0", [*CLIENT, "--max-wait", "3"])
    client.wait_for("round 1: training")
    first.signal(signal.SIGTERM)  # what the server's SIGTERM handler does (the real signal: the test above)
    assert first.wait(30) == 0
    assert client.wait(60) == 4, client.log[-2000:]  # not 0: a supervisor should see that this client did not finish
    assert "the server paused the run" in client.log and "giving up" in client.log


@pytest.mark.multiprocess
def test_sigterm_on_a_client_leaves_the_round_and_the_others_finish_it(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*SERVER, "--min-clients", "2", "--rounds", "1", "--local-epochs", "40"])
    server = fed.start_server(clock=ManualClock())  # the join grace ends when this test says: once all three are in
    quitter = fed.start_client("c0", CLIENT, process=True)  # a real SIGTERM
    for name in NAMES[1:]:
        fed.start_client(name, CLIENT)
    server.wait_for("; 3 connected")
    server.advance_until("round 1/1: selected", 1.5)
    quitter.wait_for("loaded my shard")  # its 40 local epochs start now
    quitter.signal(signal.SIGTERM)
    assert quitter.wait(60) == 130
    assert "round 1: sent" not in quitter.log  # it left at once, not after its training
    fed.server.wait_for("client c0 disconnected")
    del fed.clients["c0"]
    _finish(fed)
    first = fed.rounds()[1]
    assert first["answered"] == 2 and first["selected"] == 3 and "c0" not in first["clients"]


def test_too_few_answers_retry_then_stop_with_a_clear_message(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:200", "--rounds", "2", "--min-clients",
                                "2", "--round-timeout", "3", "--round-retries", "1", "--wait-timeout", "15", "--join-grace", "0",
                                "--finish-grace", "3"])
    server = fed.start_server(clock=ManualClock())  # the deadlines pass when this test moves the clock, not before
    doomed = fed.start_client("c0", ["--data", "synthetic:200"], fault="train:1")  # vanishes after its first batch
    c1 = fed.start_client("c1", ["--data", "synthetic:200"])
    assert doomed.wait(60) == VANISHED
    c1.wait_for("round 1: sent")
    server.wait_for("client c0 disconnected")
    server.advance_until("attempt 1 of 2", 3.5)  # past the round's deadline: 1 of 2 updates, so the round is tried again...
    server.advance_until("clients needed connected within", 15.5, after="attempt 1 of 2")  # ...c0 never comes back in --wait-timeout
    assert server.wait(60) == 2
    log = server.log
    assert "round 1 got 1 of 2 updates" in log and "attempt 1 of 2" in log
    assert "only 1 of the 2 clients needed connected within 15s (--wait-timeout)" in log
    assert c1.wait(30) == 1 and "server ended the run" in c1.log
    assert not (fed.run_dir / "final_model.safetensors").exists()


def test_over_selection_closes_at_the_target_and_refuses_late_updates(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from harness import audited_updates

    fed = inprocess_federation([*SERVER, "--min-clients", "4", "--clients-per-round", "2", "--over-select", "1.0", "--rounds", "2",
                                "--norm-quantile", "0"])  # the models are checked against the plain mean of what was taken
    fed.start_server()
    # Who is late is set by holding clients at a fault point (released from here), not by a race:
    # o2 and o3 stop after their first round-1 batch, so o0 and o1 close round 1; o0 and o1 stop in their
    # round-2 download, so o2 and o3 -- released once round 1 closed -- send their round-1 update late, then close round 2.
    stops = {"o0": "download:2:stop", "o1": "download:2:stop", "o2": "train:1:stop", "o3": "train:1:stop"}
    for name, fault in stops.items():
        fed.start_client(name, [*CLIENT, "--audit-dir", str(tmp_path / "audit")], fault=fault)
    fed.server.wait_for("round 2/2: selected 4 of 4", 120)
    for name in ("o2", "o3"):  # release only once held: a client still on its way to the fault point would stop after the release
        fed.clients[name].wait_held()
        fed.clients[name].resume()
    fed.server.wait_for("round 2/2 |", 120)
    for name in ("o0", "o1"):
        fed.clients[name].wait_held()
        fed.clients[name].resume()
    _finish(fed)

    first, second = fed.rounds()[1:]
    assert (first["selected"], first["answered"], sorted(first["clients"])) == (4, 2, ["o0", "o1"])
    assert (second["selected"], second["answered"], sorted(second["clients"])) == (4, 2, ["o2", "o3"])
    # the round-1 updates of o2 and o3 arrived while round 2 was open: refused, logged, counted in round 2's record
    assert second["rejected"].get("stale_round", 0) + second["rejected"].get("round_closed", 0) == 2, second["rejected"]
    for name in ("o2", "o3"):
        assert f"refused update from client {name}: " in fed.server.log, fed.server.log[-3000:]
        assert "round 1: server refused the update" in fed.clients[name].log
    # each round's global model is the example-weighted mean of exactly the two accepted updates
    for number, accepted in ((1, {"o0", "o1"}), (2, {"o2", "o3"})):
        sent = sorted(p.stem.split("-round")[0] for p in (tmp_path / "audit").glob(f"*-round{number:04d}.json"))
        assert number == 2 or sent == ["o0", "o1", "o2", "o3"], sent  # the late ones did compute and send theirs
        chosen = [(u, n) for (u, n, _), name in zip(audited_updates(tmp_path / "audit", number), sent) if name in accepted]
        assert len(chosen) == 2, sent
        before, after = fed.model(number - 1), fed.model(number)
        total = sum(n for _, n in chosen)
        expected = before["fc.weight"].double() + sum(u["fc.weight"].double() * n for u, n in chosen) / total
        assert torch.allclose(after["fc.weight"].double(), expected, atol=1e-6)
