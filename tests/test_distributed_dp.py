"""Distributed DP without a network: Skellam shares that sum to the configured noise, an accounting margin that bounds
the Skellam mechanism's RDP at every order, noised fixed-point sums read back through the modulus, and a secure round
whose ledger counts the noise its survivors really added."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.client.privacy import PrivacyBudget
from fedtl.client.secagg import Abort, SecureRound
from fedtl.common.config import DataAssignment, TrainConfig, TrainTask, UpdateKind
from fedtl.common.errors import PrivacyRefused
from fedtl.common.privacy.accountant import WITHOUT_REPLACEMENT, Steps, epsilon
from fedtl.common.secagg import fixedpoint, noise
from fedtl.common.secagg.messages import SecAggSetup
from fedtl.server.secagg import SecAggSettings
from fedtl.server.secagg.protocol import PHASES
from fedtl.server.strategies import StrategySettings, build_strategy
from fedtl.server.strategies.base import BudgetSpent, RoundContext
from fedtl.server.strategies.dp_settings import ClientDPSettings
from fedtl.server.validation import Update

DELTA, CLIP, BITS = 1e-5, 1.0, 16


def _variance_within(sample: np.ndarray, variance: float, z: float = 5.0) -> bool:
    """The sample variance is within z standard errors of `variance` (a normal approximation, fine for 10^5 draws)."""
    return abs(float(sample.var()) / variance - 1) < z * math.sqrt(2 / sample.size) * 1.5


def test_skellam_shares_of_k_clients_sum_to_the_configured_variance() -> None:
    k, z, coordinates = 5, 0.8, 12_810
    share = noise.client_variance(z, coordinates, BITS, k)
    total = sum(noise.skellam(share, 200_000) for _ in range(k))
    assert total.dtype == np.int64 and abs(float(total.mean())) < 5 * math.sqrt(share * k / total.size)
    assert _variance_within(total, (z * noise.sensitivity(coordinates, BITS)) ** 2)
    three = sum(noise.skellam(share, 200_000) for _ in range(3))  # two dropped out: 3/5 of the variance is left
    assert _variance_within(three, noise.sum_std(z, coordinates, BITS, k, 3) ** 2)
    a, b = noise.skellam(share, 50), noise.skellam(share, 50)
    assert not np.array_equal(a, b)  # from the operating system's randomness: no seed reproduces it


@settings(max_examples=200, deadline=None)
@given(z=st.floats(0.05, 20), coordinates=st.integers(1, 20_000_000), bits=st.integers(4, 30))
def test_the_recorded_gaussian_bounds_the_skellam_rdp_at_every_order(z: float, coordinates: int, bits: int) -> None:
    recorded = noise.ledger_multiplier(z, coordinates, bits)
    assert 0 < recorded <= z
    d2 = noise.sensitivity(coordinates, bits)
    d1 = d2 * min(math.sqrt(coordinates), d2)
    mu = (z * d2) ** 2
    for alpha in [*range(2, 64), 80, 128, 256, 4096]:
        skellam = alpha * d2**2 / (2 * mu) + min(((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
        gaussian = alpha / (2 * recorded**2)
        assert skellam <= gaussian * (1 + 1e-12), alpha


@pytest.mark.parametrize("word_bits", [32, 64])
def test_a_noised_sum_wraps_through_the_modulus_and_decodes_to_the_mean_plus_noise_of_the_stated_std(word_bits: int) -> None:
    k, z, size = 4, 1.0, 60_000
    rng = np.random.default_rng(3)
    updates = [rng.normal(size=size) * 0.001 for _ in range(k)]  # norms ~0.25: within the clip
    share = noise.client_variance(z, size, BITS, k)
    std = noise.sum_std(z, size, BITS, k, k)
    assert fixedpoint.modulus_bits(k, 1, BITS, std) == 32  # 4 x 16 bits and the noise's tails fit 32-bit words, signed
    total = np.zeros(fixedpoint.length(size), dtype=fixedpoint.WORDS[word_bits])
    for u in updates:
        encoded, clipped = fixedpoint.encode(u, 1, CLIP, BITS, rng, {"train_loss": 0.7}, word_bits, noise_variance=share)
        assert not clipped and not encoded[size:-1].any() and encoded[-1] == 1  # no metric leaves un-noised
        np.add(total, encoded, out=total)
    decoded = fixedpoint.decode(total, k, CLIP, BITS, 1, std)
    assert decoded.weight == k and decoded.stats == {} and decoded.clipped == 0
    error = (decoded.update - sum(updates) / k) / (std * 2 * CLIP / noise.levels(BITS) / k)
    assert abs(float(error.mean())) < 5 / math.sqrt(size) and _variance_within(error, 1.0)
    broken = total.copy()
    broken[7] += fixedpoint.WORDS[word_bits](1 << (word_bits - 2))  # far beyond the noise's tails
    with pytest.raises(ValueError, match="beyond what valid inputs"):
        fixedpoint.decode(broken, k, CLIP, BITS, 1, std)
    with pytest.raises(ValueError, match="weight 1"):
        fixedpoint.encode(updates[0], 3, CLIP, BITS, rng, {}, word_bits, noise_variance=share)


def _strategy(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    dp = ClientDPSettings(**{"clip": CLIP, "noise": 1.0, **kw})  # type: ignore[arg-type]
    secure = SecAggSettings(bits=BITS, clip=CLIP, max_weight=1)
    return build_strategy(StrategySettings(secure=secure, client_dp=dp), privacy_ledger=tmp_path / "privacy_ledger.json")


def _round(strategy, number: int, updates: dict[str, np.ndarray], drop_before_input: set[str] = frozenset()):  # type: ignore[no-untyped-def]
    """One secure round driven phase by phase, as the run loop does; the clients in `drop_before_input` share their keys, then
    vanish before sending their masked input (their update and their noise never arrive)."""
    names = tuple(sorted(updates))
    size = next(iter(updates.values())).size
    context = RoundContext(number, UpdateKind.WEIGHT_DELTA, frozenset({"w"}), names, population=10)
    aggregator = strategy.open({"w": torch.zeros(size)}, context)
    protocol = aggregator.protocol
    setup = protocol.setup
    clients = {}
    for name in names:
        variance = noise.client_variance(setup.noise, size, setup.bits, len(setup.participants))
        encoded, _ = fixedpoint.encode(updates[name], 1, setup.clip, setup.bits, np.random.default_rng(), {}, setup.modulus_bits,
                                       noise_variance=variance)
        clients[name] = SecureRound(setup, number, context.base_digest, name, "s", encoded)
    for name in names:
        protocol.receive("advertise", name, clients[name].start())
    alive = list(names)
    for phase in PHASES[1:]:
        if phase == "train":
            alive = [n for n in alive if n not in drop_before_input]
        protocol.opened(phase, alive)
        for name in alive:
            answer = clients[name].handle(protocol.instruction(phase, name))
            if phase == "train":
                dtype = np.int32 if setup.modulus_bits == 32 else np.int64
                aggregator.add(name, Update({"masked": torch.from_numpy(answer.view(dtype))}), 1.0)
            else:
                protocol.receive(phase, name, answer)
    return aggregator.result(), setup


def test_a_secure_round_with_distributed_noise_records_the_noise_its_survivors_added(tmp_path: Path) -> None:
    size, k = 50_000, 5
    strategy = _strategy(tmp_path, noise=0.7)
    rng = np.random.default_rng(1)
    updates = {f"c{i}": rng.normal(size=size) * 0.003 for i in range(k)}
    result, setup = _round(strategy, 1, updates)
    assert setup.noise == 0.7 and setup.max_weight == 1
    recorded = noise.ledger_multiplier(0.7, size, BITS)
    assert recorded == pytest.approx(0.7, rel=1e-6)  # with 16 bits the Skellam margin is tiny, and on the safe side
    step = Steps(WITHOUT_REPLACEMENT, recorded, population=10, sample=k)
    assert result.metrics["epsilon"] == pytest.approx(epsilon([step], DELTA), rel=1e-12)
    expected_std = 0.7 * noise.sensitivity(size, BITS) * 2 * CLIP / noise.levels(BITS) / k
    assert result.metrics["dp_noise_std"] == pytest.approx(expected_std)
    error = (result.tensors["w"].numpy() - sum(updates.values()) / k) / expected_std
    assert _variance_within(error, 1.0)  # the unmasked sum holds exactly the noise the ledger counts
    on_disk = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert len(on_disk["steps"]) == 1 and on_disk["epsilon"] == pytest.approx(result.metrics["epsilon"])

    survivors = {n: u for n, u in updates.items()}
    result2, _ = _round(strategy, 2, survivors, drop_before_input={"c4"})  # c4's input, and its noise, never arrive
    assert result2.count == 4
    fewer = noise.ledger_multiplier(0.7 * math.sqrt(4 / 5), size, BITS)
    assert result2.metrics["epsilon"] == pytest.approx(epsilon([step, Steps(WITHOUT_REPLACEMENT, fewer, population=10, sample=k)],
                                                               DELTA), rel=1e-12)
    assert result2.metrics["dp_noise_multiplier"] == pytest.approx(0.7 * math.sqrt(4 / 5))


def test_max_epsilon_is_checked_against_the_fewest_survivors_that_can_unmask(tmp_path: Path) -> None:
    size, k = 1000, 6
    strategy = _strategy(tmp_path, noise=2.0)
    threshold = strategy.secure.threshold(k)
    worst = epsilon([Steps(WITHOUT_REPLACEMENT, noise.ledger_multiplier(2.0 * math.sqrt(threshold / k), size, BITS), population=10,
                           sample=k)], DELTA)
    everyone = epsilon([Steps(WITHOUT_REPLACEMENT, noise.ledger_multiplier(2.0, size, BITS), population=10, sample=k)], DELTA)
    assert everyone < worst
    tight = _strategy(tmp_path / "a", noise=2.0, max_epsilon=(everyone + worst) / 2)  # enough if all survive, not if few do
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}), tuple(f"c{i}" for i in range(k)), population=10)
    with pytest.raises(BudgetSpent, match=f"if only {threshold} of {k} clients survive"):
        tight.open({"w": torch.zeros(size)}, context)
    _strategy(tmp_path / "b", noise=2.0, max_epsilon=worst * 1.001).open({"w": torch.zeros(size)}, context)


def test_target_epsilon_calibrates_the_clients_noise(tmp_path: Path) -> None:
    size, k = 20_000, 5
    strategy = _strategy(tmp_path, noise=0.0, target_epsilon=4.0, rounds=10)
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}), tuple(f"c{i}" for i in range(k)), population=10)
    strategy.open({"w": torch.zeros(size)}, context)
    z = strategy.noise
    recorded = noise.ledger_multiplier(z, size, BITS)
    assert epsilon([Steps(WITHOUT_REPLACEMENT, recorded, 10, population=10, sample=k)], DELTA) <= 4.0
    assert epsilon([Steps(WITHOUT_REPLACEMENT, recorded * 0.995, 10, population=10, sample=k)], DELTA) > 4.0


def test_clients_refuse_rounds_without_the_noise_their_owner_requires(tmp_path: Path) -> None:
    setup = SecAggSetup(("a", "b", "c"), 2, 2, b"seed", BITS, CLIP, 1, noise=0.5)
    budget = PrivacyBudget(tmp_path, 0.0, min_client_noise=1.0)
    task = TrainTask(3, (), "digest", TrainConfig(), DataAssignment(), secagg=setup)
    with pytest.raises(PrivacyRefused, match="multiplier of 0.5"):
        budget.check_task(task)
    with pytest.raises(PrivacyRefused, match="no secure aggregation"):
        budget.check_task(dataclasses.replace(task, secagg=None))
    PrivacyBudget(tmp_path, 0.0, min_client_noise=0.5).check_task(task)
    weighted = SecAggSetup(("a", "b", "c"), 2, 2, b"seed", BITS, CLIP, 100, noise=0.5)
    with pytest.raises(Abort, match="weight 1"):
        SecureRound(weighted, 1, "d", "a", "s", np.zeros(fixedpoint.length(10), dtype=np.uint32))
