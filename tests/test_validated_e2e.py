"""Two-server validated aggregation end to end: a real helper (server/helper, over gRPC) and a real coordinator with
real clients (tests/inprocess_federation.py). A client whose input lies outside the bound (every coordinate at the
range's edge: the attack that wrecked masked sums) is named and left out every round, as is one whose share never
reached the helper; the others' mean is applied, and the run finishes; a client without a helper of its own refuses
such rounds, and the coordinator hears why."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from helper_server import HelperServer
from inprocess_federation import InProcessFederation as Federation

from fedtl.common.validated_sum import field, proof

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--batch-size", "32", "--lr", "0.05",
          "--join-grace", "1", "--keep-round-models", "--round-timeout", "60", "--finish-grace", "5", "--seed", "7",
          "--max-update-norm", "5"]
CLIP = 5.0


@pytest.fixture
def helper() -> Iterator[HelperServer]:
    h = HelperServer()
    yield h
    h.close()


def _edge_of_the_range(self, upload, setup):  # type: ignore[no-untyped-def]
    """A dishonest client's share: every coordinate at the top of the range (in range one by one, an L2 norm sqrt(D)
    times the bound), with the slack it would need forged into its bits."""
    shape = proof.Shape(setup.coordinates, setup.bits, setup.bound)
    levels = (1 << shape.bits) - 1
    edge = np.full(shape.coordinates, levels, dtype=np.int64)
    slack = (shape.bound - int(np.dot(2 * edge - levels, 2 * edge - levels))) % field.P
    bits = ((edge[None, :] >> np.arange(shape.bits)[:, None]) & 1).ravel()
    return proof.share(np.concatenate([bits, [(slack >> k) & 1 for k in range(shape.norm_bits)], np.zeros(proof.NORM_LEVELS)]).astype(np.int64), shape)


def test_an_input_past_the_bound_is_named_and_left_out_and_the_run_finishes(tmp_path, helper: HelperServer,  # type: ignore[no-untyped-def]
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtl.client.mods.validated import ValidatedMod

    honest = ValidatedMod._share
    monkeypatch.setattr(ValidatedMod, "_share", lambda self, upload, setup: (_edge_of_the_range if self.name == "evil" else honest)(
        self, upload, setup))
    deposit = ValidatedMod.send

    def skips_the_helper(self, upload, call_next):  # type: ignore[no-untyped-def]
        if self.name == "lazy":  # uploads its share to the coordinator, never gives the helper its seed
            self.deposit = lambda round_number, seed: None
        return deposit(self, upload, call_next)

    monkeypatch.setattr(ValidatedMod, "send", skips_the_helper)
    address = helper.address
    fed = Federation(tmp_path, [*SERVER, "--helper", address, "--rounds", "2", "--min-clients", "6"])
    try:
        fed.start_server()
        for name in ("c0", "c1", "c2", "evil", "lazy"):
            fed.start_client(name, ["--data", "synthetic:600", "--helper", address])
        outsider = fed.start_client("outsider", ["--data", "synthetic:600"])  # no helper of its own
        assert outsider.wait(120) == 3, outsider.log[-2000:]
        assert fed.server.wait(180) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    assert "set --helper HOST:PORT" in outsider.log
    assert "client outsider left: it refuses the task: this round's inputs are checked by two servers" in fed.server.log
    records = [r for r in fed.rounds() if r["round"] >= 1]
    assert [r["round"] for r in records] == [1, 2] and all(r["secure"] and r["applied"] for r in records)
    left_out = {"evil": "its input failed the range proof", "lazy": "its share never reached the helper"}
    assert all(r["left_out"] == left_out for r in records), records
    assert "left out evil (its input failed the range proof), lazy (its share never reached the helper)" in fed.server.log
    for before, after in ((fed.model(0), fed.model(1)), (fed.model(1), fed.model(2))):
        step = torch.cat([(after[n] - before[n]).double().reshape(-1) for n in before if before[n].is_floating_point()])
        assert 0 < float(step.norm()) <= CLIP * 1.01  # the mean of three clipped updates; with the edge vector in, ~sqrt(D)/4 x CLIP
