"""Differential privacy end to end: ε in every round record, a client killed (kill -9) mid-upload whose ledger still
counts the round, a data owner's own limit, and a coordinator killed mid-run whose federation ledger continues and
stops the run, cleanly, before its --max-epsilon. What is killed is a real process; the rest runs in threads of this
process (tests/inprocess_federation.py: the same server and client code over real gRPC)."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from harness import Federation

from fedtl.common.privacy.accountant import EVERYONE, Steps, epsilon, from_json
from fedtl.server.clock import ManualClock

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--batch-size", "32", "--lr", "0.05",
          "--join-grace", "1", "--round-timeout", "60", "--finish-grace", "5", "--seed", "7"]
CLIENT = ["--data", "synthetic:600", "--chunk-bytes", "4096"]  # several chunks: the upload fault point is mid-stream
DELTA = 1e-5


def _ledger(path) -> list[Steps]:  # type: ignore[no-untyped-def]
    return from_json(json.loads(path.read_text())["steps"])


@pytest.mark.multiprocess
def test_record_level_dp_reports_epsilon_and_a_client_killed_mid_upload_keeps_the_round_in_its_ledger(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "3", "--min-clients", "2", "--dp-clip", "1", "--dp-epsilon", "3"])
    fed.start_server()
    fed.start_client("c0", CLIENT)
    victim = fed.start_client("c1", CLIENT, env={"FEDTL_FAULT": "upload:2"}, process=True)  # killed in its second upload
    assert victim.wait(120) == -signal.SIGKILL, victim.log[-2000:]
    fed.start_client("c1", CLIENT)
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    for name, proc in fed.clients.items():
        assert proc.wait(60) == 0, f"{name}:\n{proc.log[-3000:]}"
    records = [r for r in fed.rounds() if r["round"] >= 1]
    assert [r["round"] for r in records] == [1, 2, 3]
    spent = [r["record_epsilon"] for r in records]
    assert spent == sorted(spent) and spent[0] > 0 and all(r["epsilon"] is None for r in records)
    c0, c1 = _ledger(fed.folder / "c0" / "privacy_ledger.json"), _ledger(fed.folder / "c1" / "privacy_ledger.json")
    assert len(c0) == 3 and len(c1) == 4  # c1 trained round 2 twice: the update it died sending was counted all the same
    assert 2.9 < epsilon(c0, DELTA) <= 3.0 + 1e-6  # the noise each client calibrated spends --dp-epsilon over the 3 rounds
    assert epsilon(c1, DELTA) > 3.0 and spent[-1] == max(epsilon(c0, DELTA), epsilon(c1, DELTA))
    assert "record-level ε ≤" in fed.server.log


def test_a_data_owner_limit_stops_its_client_and_refuses_a_non_private_federation(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "4", "--min-clients", "1", "--join-grace", "3", "--dp-clip", "1",
                                            "--dp-epsilon", "4"])
    server = fed.start_server(clock=ManualClock())  # the join grace ends once both clients are in, whatever the machine's speed
    owner = fed.start_client("c0", [*CLIENT, "--max-epsilon", "3.5"])  # allows about half of the run's 4
    fed.start_client("c1", CLIENT)
    server.wait_for("; 2 connected")
    server.advance_until("round 1/4: selected", 3.5)
    assert owner.wait(180) == 0, owner.log[-3000:]
    assert "over its --max-epsilon 3.5" in owner.log
    steps = _ledger(fed.folder / "c0" / "privacy_ledger.json")
    assert 1 <= len(steps) < 4  # it trained, and stopped before the run's end
    assert epsilon(steps, DELTA) <= 3.5 < epsilon([*steps, steps[-1]], DELTA)  # exactly where one more round would pass 3.5
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]  # the others finish the run
    assert "client c0 left: its data owner's privacy limit is reached: privacy budget:" in fed.server.log  # it said why

    (fed.folder / "plain").mkdir()
    plain: Federation = inprocess_federation([*SERVER, "--rounds", "1", "--min-clients", "1", "--join-grace", "0"], fed.folder / "plain")
    plain.start_server()
    refusing = plain.start_client("c0", [*CLIENT, "--max-epsilon", "2"])
    assert refusing.wait(120) == 3, refusing.log[-2000:]
    assert "trains only under record-level DP" in refusing.log
    plain.server.wait_for("client c0 left: it refuses the task: this client trains only under record-level DP")


@pytest.mark.multiprocess
def test_client_level_ledger_survives_a_killed_coordinator_and_the_run_stops_before_max_epsilon(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    limit = epsilon([Steps(EVERYONE, 4.0, 3)], DELTA) + 1e-6  # room for three rounds of all three clients
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "8", "--min-clients", "3", "--client-dp-clip", "1", "--client-dp-noise",
                                            "4", "--max-epsilon", f"{limit:.9f}"])
    first = fed.start_server(process=True)
    for name in ("c0", "c1", "c2"):
        fed.start_client(name, CLIENT)
    first.wait_for("round 2/8 |")
    first.kill()  # kill -9: round 2's aggregate was released (the ledger says so), its checkpoint may not have landed
    ledger = fed.run_dir / "privacy_ledger.json"
    assert len(_ledger(ledger)) >= 2
    second = fed.restart_server(process=True)
    assert second.wait(180) == 0, second.log[-3000:]
    steps = _ledger(ledger)
    assert len(steps) == 3 and epsilon(steps, DELTA) <= limit  # never past the limit, whatever was re-run
    assert "privacy budget: round" in second.log and "over --max-epsilon" in second.log
    records = [r for r in fed.rounds() if r["round"] >= 1]
    assert records and all(r["epsilon"] is not None for r in records)
    assert [r["epsilon"] for r in records] == sorted(r["epsilon"] for r in records)
    assert records[-1]["epsilon"] <= epsilon(steps, DELTA) + 1e-12
    assert (fed.run_dir / "final_model.safetensors").exists()
    for proc in fed.clients.values():
        assert proc.wait(60) == 0, proc.log[-2000:]


def test_under_record_level_dp_round_one_is_a_noised_class_mean_head_within_the_same_budget(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "3", "--min-clients", "3", "--dp-clip", "1", "--dp-epsilon", "3",
                                            "--train", "head", "--head-init", "ncm", "--head-feature-clip", "0.5",
                                            "--keep-round-models"])
    fed.start_server()
    for i in range(3):
        fed.start_client(f"c{i}", CLIENT)
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    assert all(proc.wait(60) == 0 for proc in fed.clients.values())
    records = {r["round"]: r for r in fed.rounds() if r["round"] >= 1}
    assert [records[n]["statistics"] for n in (1, 2, 3)] == ["ncm", "", ""], "noised class means, then DP-SGD"
    assert 0 < records[1]["record_epsilon"] < records[3]["record_epsilon"]
    before, after = fed.model(0), fed.model(1)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert all(torch.equal(after[n], before[n]) for n in before if not n.startswith("fc."))
    for i in range(3):
        steps = _ledger(fed.folder / f"c{i}" / "privacy_ledger.json")
        head, sgd = steps[0], steps[1:]
        assert head.sampling == EVERYONE and head.count == 1 and len(sgd) == 2
        assert abs(epsilon([head], DELTA) - 1.5) < 0.01, "the head's statistics spend half the run's budget"
        assert 2.9 < epsilon(steps, DELTA) <= 3.0 + 1e-6, "and DP-SGD the rest: the run spends exactly --dp-epsilon"
