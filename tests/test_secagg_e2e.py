"""Secure aggregation end to end: clients killed in the protocol's phases, a client that restarts without its keys, the
server killed mid-protocol. The model that comes out is bit-exact with plain fixed-point FedAvg over the clients whose
masked inputs arrived. What is killed is a real process (kill -9); the rest runs in threads of this process
(tests/inprocess_federation.py: the same server and client code over real gRPC)."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
from harness import Federation

from fedtl.common import checkpoint
from fedtl.common.privacy.accountant import EVERYONE, Steps, epsilon, from_json
from fedtl.common.secagg import fixedpoint, noise

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--batch-size", "32", "--lr", "0.05",
          "--join-grace", "1", "--keep-round-models", "--round-timeout", "60", "--finish-grace", "5", "--seed", "7",
          "--secure-aggregation", "--max-update-norm", "5"]
CLIENT = ["--data", "synthetic:600"]


def _words(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy().view({torch.int16: np.uint16, torch.int32: np.uint32}.get(tensor.dtype, np.uint64))


def _expected(before: dict[str, torch.Tensor], inputs: list[np.ndarray], clip: float, bits: int,
              noise_std: float = 0.0, max_weight: int = 1 << 16) -> dict[str, torch.Tensor]:
    """What the server must compute: unflatten the decoded sum over the sorted float tensors and add it (FedAvg, lr 1)."""
    total = np.zeros_like(inputs[0])
    for vector in inputs:
        np.add(total, vector, out=total)
    decoded = fixedpoint.decode(total, len(inputs), clip, bits, max_weight, noise_std)
    after, offset = dict(before), 0
    for name in sorted(n for n, t in before.items() if t.is_floating_point()):
        size = before[name].numel()
        value = torch.from_numpy(decoded.update[offset : offset + size]).reshape(before[name].shape)
        if name.endswith("running_var"):
            value = torch.maximum(value, before[name].double() * -(1 - 1e-3))
        after[name] = before[name].clone().add_(value.to(before[name].dtype))
        offset += size
    assert offset + fixedpoint.EXTRA == inputs[0].size
    return after


@pytest.mark.multiprocess
def test_clients_killed_in_the_masked_input_and_check_phases_leave_the_exact_fixed_point_mean_of_the_rest(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "1", "--min-clients", "5", "--min-fit-clients", "3", "--secagg-threshold",
                                            "3"])
    fed.start_server()
    audit = fed.folder / "audit"
    victims = {"c0": "secagg_masked_input", "c1": "secagg_check"}  # c0 leaves after sharing keys; c1 after its masked input arrived
    procs = {name: fed.start_client(name, [*CLIENT, "--audit-dir", str(audit)], env={"FEDTL_FAULT": victims[name]}, process=True)
             if name in victims else fed.start_client(name, [*CLIENT, "--audit-dir", str(audit)]) for name in (f"c{i}" for i in range(5))}
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    for name, proc in procs.items():
        assert proc.wait(60) == (-signal.SIGKILL if name in victims else 0), proc.log[-2000:]
    record = fed.rounds()[-1]
    assert record["round"] == 1 and record["secure"] and record["answered"] == 4 and record["clients"] == ["c1", "c2", "c3", "c4"]
    inputs = [_words(checkpoint.load_tensors(audit / f"{n}-round0001-secagg-input.safetensors").tensors["encoded"])
              for n in record["clients"]]
    expected = _expected(fed.model(0), inputs, clip=5.0, bits=24)
    got = fed.model(1)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.equal(got[name], expected[name]), name  # bit-exact
    assert record["examples"] == 4 * 120 and math.isfinite(record["train_loss"])  # sums the coordinator unmasked
    assert "masked update sent" in procs["c2"].log and "revealed 4 seed and 1 key shares" in procs["c2"].log


def test_int8_under_secure_aggregation_masks_8_bit_values_in_16_bit_words_and_the_mean_is_exact(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    """Uniform weights, 3 clients: 3 x 255 fits 16 bits, so each masked input takes 2 bytes a coordinate (raw float32: 4)."""
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "1", "--min-clients", "3", "--weighting", "uniform", "--upload-codec", "int8"])
    fed.start_server()
    audit = fed.folder / "audit"
    procs = [fed.start_client(f"c{i}", [*CLIENT, "--audit-dir", str(audit)]) for i in range(3)]
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    for proc in procs:
        assert proc.wait(60) == 0, proc.log[-2000:]
    record = fed.rounds()[-1]
    assert record["secure"] and record["answered"] == 3
    inputs = [_words(checkpoint.load_tensors(audit / f"c{i}-round0001-secagg-input.safetensors").tensors["encoded"]) for i in range(3)]
    assert all(words.dtype == np.uint16 for words in inputs)
    coordinates = sum(t.numel() for t in fed.model(0).values() if t.is_floating_point())
    assert record["bytes_up"] < 3 * (2 * (coordinates + fixedpoint.EXTRA) + 1024)  # 2 bytes a word, plus a header each
    expected = _expected(fed.model(0), inputs, clip=5.0, bits=8, max_weight=1)
    got = fed.model(1)
    for name in got:
        assert torch.equal(got[name], expected[name]), name  # bit-exact: the 8-bit fixed-point mean of the three
    assert "masked update sent" in procs[0].log and "in 16-bit words" in procs[0].log


@pytest.mark.multiprocess
def test_a_client_restarted_without_its_keys_withdraws_and_a_restarted_server_restarts_the_protocol(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "2", "--min-clients", "4", "--min-fit-clients", "3"])
    fed.start_server(process=True)  # killed mid-protocol below
    victim = fed.start_client("c0", CLIENT, env={"FEDTL_FAULT": "secagg_masked_input"}, process=True)
    frozen = fed.start_client("c3", CLIENT, fault="secagg_masked_input:1:stop")  # waits at the point: holds the phase open
    for name in ("c1", "c2"):
        fed.start_client(name, CLIENT)
    assert victim.wait(120) == -signal.SIGKILL, victim.log[-2000:]
    fed.start_client("c0", CLIENT)  # back while the masked-input phase still waits, but its keys died with it
    fed.clients["c0"].wait_for("no keys for it", 60)
    fed.server.wait_for("client c0 left secure round 1: this client has no keys", 30)
    fed.server.kill()  # mid-protocol
    fed.restart_server(process=True)
    frozen.resume()
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    for name, proc in fed.clients.items():
        assert proc.wait(60) == 0, f"{name}:\n{proc.log[-3000:]}"
    rounds = [r for r in fed.rounds() if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["secure"] and r["answered"] == 4 for r in rounds)


@pytest.mark.multiprocess
def test_distributed_dp_the_model_is_the_survivors_noised_sum_and_the_ledger_counts_only_their_noise(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    z = 0.5
    fed: Federation = inprocess_federation([*SERVER[:-2], "--rounds", "1", "--min-clients", "5", "--min-fit-clients", "3",
                                            "--secagg-threshold", "3", "--client-dp-clip", "2", "--client-dp-noise", str(z)])
    fed.start_server()
    audit = fed.folder / "audit"
    procs = {"c0": fed.start_client("c0", [*CLIENT, "--audit-dir", str(audit)], env={"FEDTL_FAULT": "secagg_masked_input"}, process=True)}
    procs.update({f"c{i}": fed.start_client(f"c{i}", [*CLIENT, "--audit-dir", str(audit)]) for i in range(1, 4)})
    procs["c4"] = fed.start_client("c4", [*CLIENT, "--min-client-dp-noise", "100"])  # this owner asks for more noise
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    assert procs["c4"].wait(60) == 3 and "--min-client-dp-noise" in procs["c4"].log, procs["c4"].log[-2000:]
    assert procs["c0"].wait(60) == -signal.SIGKILL
    record = fed.rounds()[-1]
    assert record["secure"] and record["clients"] == ["c1", "c2", "c3"]  # c4 refused, c0 died before its masked input
    before = fed.model(0)
    coordinates = sum(t.numel() for t in before.values() if t.is_floating_point())
    std = noise.sum_std(z, coordinates, 24, 5, 3)  # only 3 of the 5 selected clients' noise shares are in the sum
    inputs = [_words(checkpoint.load_tensors(audit / f"{n}-round0001-secagg-input.safetensors").tensors["encoded"])
              for n in record["clients"]]
    assert all(not v[-fixedpoint.EXTRA:-1].any() for v in inputs)  # no un-noised loss, accuracy or clipped flag left a client
    expected = _expected(before, inputs, clip=2.0, bits=24, noise_std=std)
    got = fed.model(1)
    for name in got:
        assert torch.equal(got[name], expected[name]), name  # bit-exact: the unmasked sum was already noised
    recorded = noise.ledger_multiplier(z * math.sqrt(3 / 5), coordinates, 24)
    assert record["epsilon"] == pytest.approx(epsilon([Steps(EVERYONE, recorded)], 1e-5), rel=1e-9)
    ledger = json.loads((fed.run_dir / "privacy_ledger.json").read_text())
    assert len(ledger["steps"]) == 1 and ledger["steps"][0]["noise"] == pytest.approx(recorded, rel=1e-12)
    assert "distributed noise" in procs["c1"].log


def test_record_level_epsilon_is_reported_under_secure_aggregation_as_a_bound_on_the_largest(inprocess_federation) -> None:  # type: ignore[no-untyped-def]
    """Clients' ε ride in the masked input as thermometers: the coordinator logs an upper bound on the largest (5 % bins),
    as it logs the largest in the clear, and learns no client's own."""
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "2", "--min-clients", "3", "--dp-clip", "1", "--dp-epsilon", "3"])
    fed.start_server()
    for name in ("c0", "c1", "c2"):
        fed.start_client(name, [*CLIENT, "--data", f"synthetic:{300 + 150 * int(name[1])}", "--partition", "none"])
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    records = [r for r in fed.rounds() if r["round"] >= 1]
    assert [r["secure"] for r in records] == [True, True]
    for r, spent in zip(records, ([], []), strict=True):
        for name in ("c0", "c1", "c2"):
            ledger = json.loads((fed.folder / name / "privacy_ledger.json").read_text())["steps"]
            spent.append(epsilon(from_json(ledger[: r["round"]]), 1e-5))
        assert max(spent) <= r["record_epsilon"] <= max(spent) * 1.05 + 1e-9, (r["record_epsilon"], spent)
    assert "record-level ε ≤" in fed.server.log


def test_an_input_out_of_range_drops_its_round_and_the_run_goes_on(inprocess_federation, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """One participant's masked input pushed far past the range: the sum cannot come from valid inputs, and SecAgg+ cannot
    say whose. The round is dropped (the model stays as it was) and the run goes on; it used to end the run (every
    attempt failed closed, exit 2)."""
    from fedtl.client.mods.secure import SecureAggregationMod

    honest = SecureAggregationMod._upload_masked

    def forged(self, io, session_id, task, masked):  # type: ignore[no-untyped-def]
        if self.name == "evil" and task.round == 1:  # the attacker's own build of the client
            masked = masked.copy()
            masked[3:4] += masked.dtype.type(1 << (8 * masked.dtype.itemsize - 2))  # wraps, as words do
        return honest(self, io, session_id, task, masked)

    monkeypatch.setattr(SecureAggregationMod, "_upload_masked", forged)
    fed: Federation = inprocess_federation([*SERVER, "--rounds", "2", "--min-clients", "3"])
    fed.start_server()
    for name in ("c0", "c1", "evil"):
        fed.start_client(name, CLIENT)
    assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    first, second = (r for r in fed.rounds() if r["round"] >= 1)
    assert first["dropped"].startswith("secure aggregation failed closed") and not first["applied"], first
    assert second["applied"] and not second["dropped"] and second["secure"], second
    before, dropped, after = fed.model(0), fed.model(1), fed.model(2)
    assert all(torch.equal(dropped[name], before[name]) for name in before)  # round 1 changed nothing
    assert any(not torch.equal(after[name], before[name]) for name in before)  # round 2 trained
    assert "round 1 dropped: secure aggregation failed closed" in fed.server.log and "DROPPED:" in fed.server.log
