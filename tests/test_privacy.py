"""Differential privacy without a network: ε against dp-accounting and Opacus, DP-SGD against a per-example reference,
the noise's standard deviation, clip bounds, client-level DP-FedAvg's ledger and budget, and the refusals."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import dp_accounting
import pytest
import torch
from dp_accounting import pld, rdp

from fedtl.client.privacy import PrivacyBudget, PrivacyLedger
from fedtl.common.batches import InputTransform
from fedtl.common.config import DataAssignment, TrainConfig, TrainTask, UpdateKind
from fedtl.common.data import open_split
from fedtl.common.errors import BudgetReached, ConfigError, DataUnavailable, PrivacyRefused
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import TrainPolicy, build_network, set_train_mode
from fedtl.common.privacy import dpsgd
from fedtl.common.privacy.accountant import EVERYONE, ORDERS, POISSON, WITHOUT_REPLACEMENT, Steps, calibrate, epsilon
from fedtl.common.privacy.dpsgd import private_train
from fedtl.server.config import parse_args
from fedtl.server.strategies import StrategySettings, build_strategy
from fedtl.server.strategies.base import BudgetSpent, RoundContext
from fedtl.server.strategies.dp_settings import ClientDPSettings
from fedtl.server.validation import Update

DELTA = 1e-5
LEDGER = [Steps(POISSON, 1.1, 40, rate=0.02), Steps(POISSON, 1.1, 40, rate=0.02), Steps(POISSON, 0.9, 25, rate=0.05)]


# ---------------------------------------------------------------- the accountant


def test_a_client_ledger_reports_the_epsilon_of_dp_accounting_and_of_opacus(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    for steps in LEDGER:
        ledger.record(steps)
    reported = PrivacyLedger(tmp_path).epsilon(DELTA, "rdp")  # read back from its file

    reference = rdp.RdpAccountant(ORDERS)
    for s in LEDGER:
        reference.compose(dp_accounting.PoissonSampledDpEvent(s.rate, dp_accounting.GaussianDpEvent(s.noise)), s.count)
    assert reported == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)

    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(s.noise, s.rate, s.count) for s in LEDGER]
    assert reported == pytest.approx(opacus.get_epsilon(DELTA, alphas=ORDERS), rel=1e-6)

    exact = pld.PLDAccountant()
    for s in LEDGER:
        exact.compose(dp_accounting.PoissonSampledDpEvent(s.rate, dp_accounting.GaussianDpEvent(s.noise)), s.count)
    assert PrivacyLedger(tmp_path).epsilon(DELTA, "pld") == pytest.approx(exact.get_epsilon(DELTA), rel=1e-9)
    assert PrivacyLedger(tmp_path).epsilon(DELTA, "pld") < reported  # PLD is the tighter accountant


def test_client_selection_is_accounted_as_sampling_without_replacement_or_as_no_amplification() -> None:
    chosen = [Steps(WITHOUT_REPLACEMENT, 2.0, population=20, sample=5)] * 10
    reference = rdp.RdpAccountant(ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    # replacing one client's data moves the clipped sum by up to twice the clip: half the multiplier
    reference.compose(dp_accounting.SampledWithoutReplacementDpEvent(20, 5, dp_accounting.GaussianDpEvent(1.0)), 10)
    assert epsilon(chosen, DELTA) == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)
    everyone = rdp.RdpAccountant(ORDERS)
    everyone.compose(dp_accounting.GaussianDpEvent(2.0), 10)
    assert epsilon([Steps(EVERYONE, 2.0, 10)], DELTA) == pytest.approx(everyone.get_epsilon(DELTA), rel=1e-9)
    assert epsilon([], DELTA) == 0.0 and epsilon([Steps(EVERYONE, 0.0)], DELTA) == math.inf
    with pytest.raises(ValueError, match="mixes"):
        epsilon([Steps(POISSON, 1.0, rate=0.1), chosen[0]], DELTA)


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_the_calibrated_noise_reaches_the_target_and_a_little_less_would_not(target: float) -> None:
    def plan(z: float) -> list[Steps]:
        return [Steps(POISSON, z, 500, rate=0.01)]

    z = calibrate(target, DELTA, plan)
    assert epsilon(plan(z), DELTA) <= target < epsilon(plan(z * 0.995), DELTA)


# ---------------------------------------------------------------- record-level DP-SGD


def _setup(tmp_path: Path, n: int = 24, policy: str = "head"):  # type: ignore[no-untyped-def]
    net = build_network("tiny_cnn", 10, "none", seed=0)
    data = open_split("synthetic:200", "train", tmp_path).load(range(n))
    inputs = ImageInputs.of(data, InputTransform((0.5,) * 3, (0.5,) * 3, 32), torch.device("cpu"))
    first = TrainPolicy.parse(policy).first_trainable(net)
    set_train_mode(net, first)
    _setup.names = {n for n, p in net.module.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
    set_train_mode(net, len(net.stages))
    return net, inputs, first


def _trainable(net) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {n: p.detach().clone() for n, p in net.module.named_parameters() if n in _setup.names}  # type: ignore[attr-defined]


def _set(net, values: dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        for n, p in net.module.named_parameters():
            if n in values:
                p.copy_(values[n])


# batch >= n: every example is in every step (Poisson with q = 1), so a step is deterministic but for the noise
STEP = TrainConfig(batch_size=64, lr=0.5, momentum=0.0, weight_decay=0.0, max_steps=1, dp_clip=0.05, dp_noise=1.0)


@pytest.mark.parametrize("policy", ["head", "all"])  # head: Linear layers only (ghost clipping); all: convolutions too (vmap)
def test_a_dp_sgd_step_is_the_mean_of_per_example_clipped_gradients(tmp_path: Path, policy: str) -> None:
    net, inputs, first = _setup(tmp_path, policy=policy)
    set_train_mode(net, first)
    fast = dpsgd._LinearClipper.of(net, first, None) is not None  # type: ignore[arg-type]
    set_train_mode(net, len(net.stages))
    assert fast == (policy == "head")
    start = _trainable(net)
    _, steps = private_train(net, first, inputs, STEP, noise=0.0)
    assert steps == Steps(POISSON, 0.0, 1, rate=1.0)
    got = _trainable(net)

    _set(net, start)  # the reference: one example at a time, through autograd, in eval mode (no batch statistics)
    net.module.eval()
    for p in net.module.parameters():
        p.requires_grad_(False)
    params = {n: p for n, p in net.module.named_parameters() if n in start}
    for p in params.values():
        p.requires_grad_(True)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    clipped = 0
    for i in range(len(inputs)):
        x = inputs.batch(torch.tensor([i]))
        loss = torch.nn.functional.cross_entropy(net.forward(x, 0), inputs.labels[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        clipped += int(norm > STEP.dp_clip)
        factor = min(1.0, STEP.dp_clip / float(norm))
        for (n, _), g in zip(params.items(), grads):
            total[n] += factor * g
    assert clipped > len(inputs) // 2  # the clip bites, so the test would see it missing
    for n in start:
        expected = start[n] - STEP.lr * total[n] / len(inputs)
        assert torch.allclose(got[n], expected, atol=1e-6), n
    step = torch.sqrt(sum((got[n] - start[n]).pow(2).sum() for n in start))
    assert float(step) <= STEP.lr * STEP.dp_clip + 1e-6  # no example moves the model by more than lr x clip / n each


@pytest.mark.parametrize("policy", ["head", "all"])
def test_dp_sgd_noise_has_the_configured_standard_deviation(tmp_path: Path, policy: str) -> None:
    net, inputs, first = _setup(tmp_path, policy=policy)
    start = _trainable(net)
    private_train(net, first, inputs, STEP, noise=0.0)
    clean = _trainable(net)
    z, samples = 3.0, []
    for _ in range(8):
        _set(net, start)
        private_train(net, first, inputs, STEP, noise=z)
        noisy = _trainable(net)
        # the step is lr x (clipped sum + N(0, (z C)^2)) / n: what is left after the clean step is the noise
        samples += [((clean[n] - noisy[n]) * len(inputs) / STEP.lr).flatten() for n in start]
    noise = torch.cat(samples).double()
    expected = z * STEP.dp_clip
    tolerance = 5 * math.sqrt(2 / noise.numel())  # 5 standard errors of a sample variance
    assert abs(float(noise.var()) / expected**2 - 1) < tolerance, (float(noise.std()), expected)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(noise.numel())


def test_a_client_refuses_to_train_past_its_own_limit_and_keeps_its_ledger(tmp_path: Path) -> None:
    net, inputs, first = _setup(tmp_path)
    config = TrainConfig(batch_size=8, lr=0.1, dp_clip=1.0, dp_epsilon=2.0, dp_rounds=3)
    budget = PrivacyBudget(tmp_path / "work", max_epsilon=2.0)
    spent = []
    for _ in range(3):
        _, epsilon, _ = budget.train(net, first, inputs, config, "run1", None)
        spent.append(epsilon)
    assert spent == sorted(spent) and 1.9 < spent[-1] <= 2.0 + 1e-6  # the calibrated noise spends the budget over 3 rounds
    again = PrivacyBudget(tmp_path / "work", max_epsilon=2.0)  # a restarted client
    assert again.ledger.epsilon(config.dp_delta, "rdp") == pytest.approx(spent[-1]) and len(again.ledger.steps) == 3
    with pytest.raises(BudgetReached, match="over its --max-epsilon 2"):
        again.train(net, first, inputs, config, "run1", None)
    assert len(PrivacyBudget(tmp_path / "work", 0).ledger.steps) == 3  # nothing recorded for a round not trained
    with pytest.raises(PrivacyRefused, match="only under record-level DP"):
        again.check_task(TrainTask(1, (), "digest", TrainConfig(), DataAssignment()))
    (tmp_path / "work" / "privacy_ledger.json").write_text("{not json")
    with pytest.raises(DataUnavailable, match="never started afresh"):
        PrivacyBudget(tmp_path / "work", 0)


def test_record_level_settings_that_cannot_hold_are_refused() -> None:
    with pytest.raises(ConfigError, match="exactly one of --dp-noise"):
        TrainConfig(dp_clip=1.0)
    with pytest.raises(ConfigError, match="also give --dp-clip"):
        TrainConfig(dp_epsilon=3.0)
    with pytest.raises(ConfigError, match="--algorithm fedavg"):
        TrainConfig(algorithm="fedsgd", dp_clip=1.0, dp_noise=1.0)
    with pytest.raises(ConfigError, match="--dp-accountant"):
        TrainConfig(dp_accountant="moments")
    cfg = parse_args(["--dp-clip", "1", "--dp-epsilon", "3", "--rounds", "7"], env={})
    assert cfg.train.dp_rounds == 7  # the budget is spread over the run unless --dp-rounds says otherwise


# ---------------------------------------------------------------- client-level DP-FedAvg


def _client_dp(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    settings = ClientDPSettings(**{"clip": 1.0, "noise": 1.0, **kw})  # type: ignore[arg-type]
    return build_strategy(StrategySettings(client_dp=settings, weighting="examples"), privacy_ledger=tmp_path / "privacy_ledger.json")


def _context(number: int, k: int = 4, population: int = 10) -> RoundContext:
    return RoundContext(number, UpdateKind.WEIGHT_DELTA, frozenset({"w"}), tuple(f"c{i}" for i in range(k)), population=population)


def test_client_level_dp_clips_every_update_then_adds_noise_of_z_clip_over_k(tmp_path: Path) -> None:
    size, k = 200_000, 4
    strategy = _client_dp(tmp_path, noise=1.5, clip=2.0)
    template = {"w": torch.zeros(size)}
    aggregator = strategy.open(template, _context(1, k))
    generator = torch.Generator().manual_seed(0)
    updates = [torch.randn(size, generator=generator) * scale for scale in (0.001, 1.0, 3.0, 0.0)]
    for i, u in enumerate(updates):
        aggregator.add(f"c{i}", Update({"w": u.clone()}), float(10 * (i + 1)))  # uneven claims: uniform weights regardless
    result = aggregator.result()
    clipped = [u * min(1.0, 2.0 / max(float(u.norm()), 1e-12)) for u in updates]
    assert all(float(c.norm()) <= 2.0 + 1e-4 for c in clipped)
    noise = result.tensors["w"] - sum(c.double() for c in clipped) / k
    expected = 1.5 * 2.0 / k
    assert abs(float(noise.std()) / expected - 1) < 5 * math.sqrt(1 / (2 * size)) * 2
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(size)
    assert result.stats["clipped"] == 2 and result.metrics["dp_noise_std"] == pytest.approx(expected)


def test_example_weights_under_client_level_dp_take_the_largest_share_as_sensitivity(tmp_path: Path) -> None:
    strategy = _client_dp(tmp_path, weighting="examples", noise=2.0)
    aggregator = strategy.open({"w": torch.zeros(10)}, _context(1, 3))
    for i, n in enumerate((10.0, 30.0, 60.0)):
        aggregator.add(f"c{i}", Update({"w": torch.zeros(10)}), n)
    assert aggregator.result().metrics["dp_noise_std"] == pytest.approx(2.0 * 1.0 * 0.6)


def test_the_federation_ledger_is_written_before_release_continued_on_restart_and_stops_the_run_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.json"
    step = Steps(WITHOUT_REPLACEMENT, 3.0, population=10, sample=4)
    first = _client_dp(tmp_path, noise=3.0, max_epsilon=epsilon([step] * 3, DELTA) + 1e-9)
    for number in (1, 2):
        aggregator = first.open({"w": torch.zeros(5)}, _context(number))
        aggregator.add("c0", Update({"w": torch.ones(5)}), 1.0)
        result = aggregator.result()
        on_disk = json.loads(path.read_text())
        assert len(on_disk["steps"]) == number and result.metrics["epsilon"] == pytest.approx(epsilon([step] * number, DELTA))
    restarted = _client_dp(tmp_path, noise=3.0, max_epsilon=epsilon([step] * 3, DELTA) + 1e-9)  # the coordinator, killed and back
    aggregator = restarted.open({"w": torch.zeros(5)}, _context(3))
    aggregator.add("c0", Update({"w": torch.ones(5)}), 1.0)
    assert aggregator.result().metrics["epsilon"] == pytest.approx(epsilon([step] * 3, DELTA))
    with pytest.raises(BudgetSpent, match="over --max-epsilon"):
        restarted.open({"w": torch.zeros(5)}, _context(4))
    assert len(json.loads(path.read_text())["steps"]) == 3


def test_target_epsilon_calibrates_the_noise_before_round_1_and_adaptive_clipping_follows_the_quantile(tmp_path: Path) -> None:
    k = 200  # adaptive clipping is for many clients: the count's noise (k / 20) must exceed half the multiplier
    strategy = _client_dp(tmp_path, noise=0.0, target_epsilon=4.0, rounds=20, quantile=0.5, clip=1.0)
    aggregator = strategy.open({"w": torch.zeros(3)}, _context(1, k, 2 * k))
    dp = strategy.inner  # under the weighting wrapper
    assert epsilon([Steps(WITHOUT_REPLACEMENT, dp.noise, 20, population=2 * k, sample=k)], DELTA) == pytest.approx(4.0, rel=2e-3)
    for i in range(k):
        aggregator.add(f"c{i}", Update({"w": torch.full((3,), 0.01)}), 1.0)  # all well inside the clip
    aggregator.result()
    assert dp.clip < 1.0  # moves down towards the median norm
    for number in range(2, 40):
        aggregator = strategy.open({"w": torch.zeros(3)}, _context(number, k, 2 * k))
        for i in range(k):
            aggregator.add(f"c{i}", Update({"w": torch.full((3,), 0.001 * (i + 1))}), 1.0)
        aggregator.result()
    median = 0.001 * (k / 2) * math.sqrt(3)
    assert 0.6 * median < dp.clip < 1.6 * median, dp.clip


@pytest.mark.parametrize(("flags", "message"), [
    (["--client-dp-clip", "1"], "exactly one of --client-dp-noise"),
    (["--target-epsilon", "3"], "also give --client-dp-clip"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--aggregation", "median"], "Use --aggregation mean"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--max-update-norm", "3"], "drop --max-update-norm"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--clients-per-round", "2", "--over-select", "0.5"], "drop it under client-level"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--secure-aggregation", "--secagg-clip", "5",
      "--min-clients", "4"], "drop --secagg-clip"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--secure-aggregation", "--client-dp-quantile", "0.5",
      "--min-clients", "4"], "give a fixed --client-dp-clip"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--secure-aggregation", "--client-dp-weighting", "examples",
      "--min-clients", "4"], "use uniform"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--secure-aggregation", "--dp-accountant", "pld",
      "--min-clients", "4"], "use --dp-accountant rdp"),
    (["--client-dp-clip", "1", "--client-dp-noise", "1", "--secure-aggregation", "--secagg-max-weight", "100",
      "--min-clients", "4"], "weight 1"),
    (["--client-dp-clip", "1", "--target-epsilon", "3", "--max-epsilon", "2"], "would stop early"),
])
def test_client_level_settings_that_cannot_hold_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_args(flags, env={})


def test_client_level_dp_composes_into_the_strategy_description() -> None:
    cfg = parse_args(["--client-dp-clip", "0.5", "--target-epsilon", "8", "--client-dp-quantile", "0.5"], env={})
    assert cfg.strategy.client_dp == replace(cfg.strategy.client_dp, clip=0.5, target_epsilon=8.0, quantile=0.5, rounds=3)
    text = build_strategy(cfg.strategy).describe()
    assert "client-level DP (adaptive clip (quantile 0.5, from 0.5), noise for ε = 8" in text


def test_noised_head_statistics_carry_the_calibrated_noise_and_stay_within_the_owners_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedtl.common import heads
    from fedtl.common.config import TrainConfig

    features, labels = torch.rand(400, 64, dtype=torch.float64), torch.arange(400) % 10
    clean = heads.statistics("ncm", features, labels, 10, 2.0)
    noised = heads.noised("ncm", clean, 400, 2.0, 3.0, torch.Generator().manual_seed(0))
    residual = (noised[heads.CROSS] - clean[heads.CROSS]) * 400  # the noise on the sums
    assert abs(float(residual.std()) / (3.0 * (2.0**2 + 1) ** 0.5) - 1) < 0.05  # multiplier x the sensitivity √(C² + 1)
    with pytest.raises(ValueError, match="use ncm"):
        heads.noised("ridge", clean, 400, 2.0, 3.0, torch.Generator())

    config = TrainConfig(dp_clip=1.0, dp_epsilon=2.0, statistics="ncm", feature_clip=2.0)
    budget = PrivacyBudget(tmp_path / "work", max_epsilon=2.5)
    out, spent, multiplier = budget.release("ncm", clean, 400, config, "run-a")
    assert abs(spent - 2.0) < 0.01 and budget.ledger.steps[0].noise == multiplier and not torch.equal(out[heads.CROSS], clean[heads.CROSS])
    with pytest.raises(BudgetReached, match="the head's statistics would take"):
        budget.release("ncm", clean, 400, config, "run-b")  # another release of the same size would pass 2.5
    assert len(PrivacyBudget(tmp_path / "work", 0).ledger.steps) == 1, "nothing recorded for statistics never released"


def test_a_coordinator_cannot_loosen_the_owners_limit_with_a_larger_delta(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedtl.client.config import parse_args as client_args

    private = TrainConfig(dp_clip=1.0, dp_noise=1.0, dp_delta=0.5)
    budget = PrivacyBudget(tmp_path / "work", max_epsilon=3.0)  # the owner's δ: 1e-5 unless it says otherwise
    with pytest.raises(PrivacyRefused, match="δ = 0.5, larger than this data owner's --dp-delta 1e-05"):
        budget.check_task(TrainTask(1, (), "digest", private, DataAssignment()))
    budget.check_task(TrainTask(1, (), "digest", replace(private, dp_delta=1e-6), DataAssignment()))  # stricter: fine
    # the limit is checked at the owner's δ: steps worth ε ≤ 3 at δ = 0.01 are far over 3 at 1e-5
    step = Steps(POISSON, 1.5, 400, rate=0.05)
    assert epsilon([step], 0.01) < 3.0 < epsilon([step], 1e-5)
    with pytest.raises(BudgetReached, match="at δ = 1e-05"):
        budget._check(replace(private, dp_delta=0.01), step, "this round")
    assert client_args(["--server", "h:1", "--dp-delta", "1e-3"], env={}).dp_delta == 1e-3
    with pytest.raises(ConfigError, match="--dp-delta must be in"):
        client_args(["--server", "h:1", "--dp-delta", "1"], env={})
