"""The robustness benchmark's attackers (bench/robustness/attacks.py) do what they claim, against the real runtime."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from test_client_runtime import DATA, FakeServer

from bench.robustness.attacks import TARGET, AttackRuntime, Colluders, Witness, min_max_gamma, trigger
from fedtl.common import codecs, tensorcodec
from fedtl.common.config import TrainConfig

CONFIG = TrainConfig(local_epochs=1, batch_size=16, lr=0.05, seed=3, feature_cache="off")


def _runtime(tmp: Path, name: str, attack: str | None, colluders: Colluders | None = None):  # type: ignore[no-untyped-def]
    from fedtl.client.runtime import ClientRuntime

    args = (DATA, tmp / "cache", tmp / name, torch.device("cpu"), False, name)
    return ClientRuntime(*args) if attack is None else AttackRuntime(*args, attack=attack, clients=10, colluders=colluders)


def _round(runtime, server: FakeServer) -> tuple[dict[str, torch.Tensor], int]:  # type: ignore[no-untyped-def]
    runtime.set_recipe(server.recipe)
    outcome = runtime.run_round(server.task(1, CONFIG), server.download)
    return dict(tensorcodec.decode(codecs.get("raw").encode(outcome.update)).tensors), outcome.num_examples


@pytest.mark.parametrize("attack, scale", [("sign_flip", -4.0), ("scaling", 10.0), ("inflated", -1.0), ("backdoor", None)])
def test_forged_updates_are_the_honest_one_transformed(tmp_path: Path, attack: str, scale: float | None) -> None:
    honest, n = _round(_runtime(tmp_path, "h", None), FakeServer("all"))
    forged, claimed = _round(_runtime(tmp_path, "a", attack), FakeServer("all"))
    if scale is not None:
        for name, value in honest.items():
            if name.endswith("running_var"):  # left honest: the coordinator refuses a negative variance outright
                assert torch.equal(forged[name], value), name
            elif value.is_floating_point():
                assert torch.allclose(forged[name], value * scale, rtol=1e-5, atol=1e-7), name
    else:  # the backdoor trains on poisoned data, then boosts: not a multiple of the honest update
        assert not torch.allclose(forged["fc.weight"], honest["fc.weight"] * 5)
    assert claimed == (10_000_000 if attack == "inflated" else n)


def test_gaussian_noise_is_ten_times_the_honest_norm(tmp_path: Path) -> None:
    honest, _ = _round(_runtime(tmp_path, "h", None), FakeServer("all"))
    forged, _ = _round(_runtime(tmp_path, "g", "gaussian"), FakeServer("all"))

    def norm(u: dict[str, torch.Tensor]) -> float:
        forged_part = (v for k, v in u.items() if v.is_floating_point() and not k.endswith("running_var"))  # variances stay honest
        return sum(float(v.double().norm()) ** 2 for v in forged_part) ** 0.5

    assert 8 < norm(forged) / norm(honest) < 12


def test_label_flip_and_backdoor_poison_the_training_data(tmp_path: Path) -> None:
    server = FakeServer("all")
    flipper, backdoor = _runtime(tmp_path, "f", "label_flip"), _runtime(tmp_path, "b", "backdoor")
    for runtime in (flipper, backdoor):
        runtime.set_recipe(server.recipe)
        runtime.run_round(server.task(1, CONFIG), server.download)
    honest = _runtime(tmp_path, "h", None)
    honest.set_recipe(server.recipe)
    clean = honest._load_shard(server.task(1, CONFIG).data).train
    assert torch.equal(flipper._shard.train.labels, 9 - clean.labels)
    poisoned = backdoor._shard.train
    marked = (poisoned.images[:, :, -4:, -4:] == 255).flatten(1).all(1)
    assert marked.sum() >= len(clean) // 2 and bool((poisoned.labels[marked] == TARGET).all())
    assert torch.equal(trigger(clean.images)[:, :, -4:, -4:], torch.full_like(clean.images[:, :, -4:, -4:], 255))


def test_alie_colluders_send_mean_minus_z_std_of_their_honest_updates(tmp_path: Path) -> None:
    colluders = Colluders(2, 10)
    results: dict[str, dict[str, torch.Tensor]] = {}

    def attack(name: str) -> None:
        results[name] = _round(_runtime(tmp_path, name, "alie", colluders), FakeServer("all"))[0]

    threads = [threading.Thread(target=attack, args=(name,)) for name in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert torch.equal(results["x"]["fc.weight"], results["y"]["fc.weight"]), "colluders send the same forged update"
    assert 0.2 < colluders.z() < 0.3  # n = 10, f = 2: z = Phi^-1(0.6)


def test_min_max_sends_the_farthest_update_no_farther_from_an_honest_one_than_two_honest_ones_are(tmp_path: Path) -> None:
    colluders = Colluders(1, 3, witnesses=2)
    sent: dict[str, dict[str, torch.Tensor]] = {}

    def client(name: str) -> None:
        args = (DATA, tmp_path / "cache", tmp_path / name, torch.device("cpu"), False, name)
        runtime = AttackRuntime(*args, attack="min_max", clients=3, colluders=colluders) if name == "m" else Witness(*args, colluders=colluders)
        config = TrainConfig(local_epochs=1, batch_size=16, lr=0.05, seed=ord(name), feature_cache="off")  # honest updates differ
        server = FakeServer("all")
        runtime.set_recipe(server.recipe)
        outcome = runtime.run_round(server.task(1, config), server.download)
        sent[name] = dict(tensorcodec.decode(codecs.get("raw").encode(outcome.update)).tensors)

    threads = [threading.Thread(target=client, args=(name,)) for name in ("m", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    keys = [k for k, v in sent["a"].items() if v.is_floating_point() and not k.endswith("running_var")]
    flat = {n: torch.cat([u[k].double().flatten() for k in keys]) for n, u in sent.items()}
    everyone = torch.stack([torch.cat([u[k].double().flatten() for k in keys]) for u in colluders._rounds[1]])  # all honest updates
    assert len(everyone) == 3 and any(torch.allclose(row, flat["a"]) for row in everyone), "the witnesses showed what they sent"
    limit = float(torch.cdist(everyone, everyone).max())
    farthest = float((everyone - flat["m"]).norm(dim=1).max())
    assert farthest <= limit * (1 + 1e-5)
    assert farthest >= limit * 0.99, "gamma is as large as the limit allows"
    assert not torch.allclose(flat["m"], everyone.mean(0)), "the forged update is moved off the mean"


def test_min_max_gamma_is_the_largest_that_fits() -> None:
    rows = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    direction = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    gamma = min_max_gamma(rows, direction)
    point = rows.mean(0) + gamma * direction
    assert abs(float((rows - point).norm(dim=1).max()) - float(torch.cdist(rows, rows).max())) < 1e-9
