"""No single participant stalls a run: a round closes once its quorum answered and the rest did not within the straggler
wait, not at --round-timeout; the quorum by default is two thirds of the clients under the plain mean. A real server and
clients over gRPC (tests/inprocess_federation.py); the silent client is frozen at a fault point, its stream open."""

from __future__ import annotations

from harness import Federation

from fedtl.server.config import parse_args

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:300", "--batch-size", "32", "--join-grace", "0",
          "--finish-grace", "5", "--round-timeout", "600"]
CLIENT = ["--data", "synthetic:300"]


def _quorum(*flags: str) -> int:
    return parse_args(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", *flags], env={}).schedule.min_fit_clients


def test_the_default_quorum_is_two_thirds_under_the_mean_and_everyone_under_a_robust_rule() -> None:
    assert [_quorum("--min-clients", str(n)) for n in (1, 2, 3, 4, 6, 10)] == [1, 2, 2, 3, 4, 7]
    assert _quorum("--min-clients", "10", "--clients-per-round", "6") == 4
    assert _quorum("--min-clients", "4", "--aggregation", "median") == 4, "a robust rule's tolerance counts on every update"
    assert _quorum("--min-clients", "4", "--min-fit-clients", "4") == 4


def test_a_silent_client_no_longer_holds_each_round_to_the_deadline(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "2", "--min-clients", "3", "--straggler-wait", "1"])
    fed.start_server()
    silent = fed.start_client("c2", CLIENT, fault="train:1:stop")  # connected, selected, never answers
    for name in ("c0", "c1"):
        fed.start_client(name, CLIENT)
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]  # far sooner than two 600 s round timeouts
    assert "client names are first come, first served" in fed.server.log  # no credentials: the server says what binds a name
    rounds = [r for r in fed.rounds() if r["round"] > 0]
    assert [(r["round"], r["answered"], r["close_reason"]) for r in rounds] == [(1, 2, "straggler_wait"), (2, 2, "straggler_wait")]
    silent.resume()
    for proc in fed.clients.values():
        assert proc.wait(60) == 0, proc.log[-2000:]


def test_a_client_that_leaves_for_good_holds_neither_its_round_nor_the_next(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "2", "--min-clients", "4"])  # quorum: 3 of 4
    fed.start_server()
    fed.start_client("c3", CLIENT, fault="train:1")  # its thread unwinds after a batch: the stream closes, as on Ctrl-C
    for name in ("c0", "c1", "c2"):
        fed.start_client(name, CLIENT)
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]  # long before the 600 s deadline, and without c3 coming back
    first, second = [r for r in fed.rounds() if r["round"] > 0]
    assert first["answered"] == 3 and first["close_reason"] == "clients_gone" and "c3" not in first["clients"]
    assert second["answered"] == 3 and sorted(second["clients"]) == ["c0", "c1", "c2"], "round 2 starts with the quorum connected"
