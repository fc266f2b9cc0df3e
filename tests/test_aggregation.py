"""The strategy seam: the streaming mean against hand-computed numbers and a batch reference; every server
optimizer against an independent plain-numpy reference over several chained rounds; the wrappers."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from fedtl.common.config import UpdateKind
from fedtl.server.strategies import OPTIMIZERS, StrategySettings, build_strategy
from fedtl.server.strategies.base import RoundContext
from fedtl.server.strategies.mean import Accumulator, weighted_mean
from fedtl.server.validation import Update

DELTA = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}))


def run_round(strategy, weights, updates, context=DELTA):  # type: ignore[no-untyped-def]
    aggregator = strategy.open(weights, context)
    for i, (tensors, n) in enumerate(updates):
        aggregator.add(f"c{i}", Update({k: v.clone() for k, v in tensors.items()}), n)
    aggregate = aggregator.result()
    strategy.apply(weights, aggregate, context)
    return aggregate


def test_fedavg_weights_by_example_count() -> None:
    acc = Accumulator({"w": torch.zeros(2)})
    acc.add({"w": torch.tensor([1.0, 2.0])}, 1)
    acc.add({"w": torch.tensor([4.0, 8.0])}, 3)
    # (1*[1,2] + 3*[4,8]) / 4 = [13/4, 26/4]
    assert acc.mean()["w"].tolist() == [3.25, 6.5]
    assert acc.total_weight == 4 and acc.count == 2


def test_fedavg_step_moves_weights_by_the_mean_delta_and_buffers_take_the_mean_value() -> None:
    weights = {"w": torch.tensor([1.0, 1.0]), "bn.running_mean": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(10)}
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}))
    update = {"w": torch.tensor([0.5, -1.0]), "bn.running_mean": torch.tensor([0.25]), "bn.num_batches_tracked": torch.tensor(3)}
    half = {"w": torch.tensor([0.5, -1.0]), "bn.running_mean": torch.tensor([0.25]), "bn.num_batches_tracked": torch.tensor(2)}
    run_round(build_strategy(StrategySettings()), weights, [(update, 3), (half, 2)], context)
    assert weights["w"].tolist() == [1.5, 0.0]
    assert weights["bn.running_mean"].tolist() == [0.25]
    assert int(weights["bn.num_batches_tracked"]) == 13  # integer buffers take the rounded mean delta: (3*3 + 2*2) / 5 = 2.6 -> 3


def test_fedsgd_step_is_w_minus_lr_times_mean_gradient() -> None:
    weights = {"w": torch.tensor([1.0, 2.0])}
    gradient = RoundContext(1, UpdateKind.GRADIENT, frozenset({"w"}))
    run_round(build_strategy(StrategySettings(lr=0.1)), weights, [({"w": torch.tensor([1.0, 0.0])}, 2), ({"w": torch.tensor([4.0, 3.0])}, 1)],
              gradient)  # mean grad = [2, 1]
    assert weights["w"] == pytest.approx(torch.tensor([0.8, 1.9]))


def test_fedavgm_accumulates_server_momentum() -> None:
    weights = {"w": torch.tensor([0.0])}
    strategy = build_strategy(StrategySettings(optimizer="avgm", lr=1.0, momentum=0.5))
    for _ in range(2):  # v = 1, w = 1; then v = 1.5, w = 2.5
        run_round(strategy, weights, [({"w": torch.tensor([1.0])}, 1)])
    assert weights["w"].item() == pytest.approx(2.5)


def test_rejects_mismatched_updates_and_empty_means() -> None:
    acc = Accumulator({"w": torch.zeros(1)})
    with pytest.raises(ValueError):
        acc.add({"v": torch.zeros(1)}, 1)
    with pytest.raises(ValueError):
        acc.add({"w": torch.zeros(1)}, 0)
    with pytest.raises(ValueError):
        acc.mean()


# ---------------------------------------------------------------- server optimizers vs an independent numpy reference


def numpy_reference(kind: str, rounds: list[list[tuple[np.ndarray, float]]], w0: np.ndarray, lr: float, beta1: float, beta2: float,
                    tau: float, momentum: float, bias_correction: bool) -> np.ndarray:
    """Reddi et al. (2021), Algorithm 2, and FedAvgM, written out from the papers in float64 numpy."""
    w, m, v, vel = w0.astype(np.float64), np.zeros_like(w0, np.float64), np.zeros_like(w0, np.float64), np.zeros_like(w0, np.float64)
    for t, updates in enumerate(rounds, start=1):
        total = sum(n for _, n in updates)
        delta = sum(u.astype(np.float64) * n for u, n in updates) / total
        if kind == "sgd":
            w = w + lr * delta
            continue
        if kind == "avgm":
            vel = momentum * vel + delta
            w = w + lr * vel
            continue
        m = beta1 * m + (1 - beta1) * delta
        if kind == "adam":
            v = beta2 * v + (1 - beta2) * delta**2
        elif kind == "yogi":
            v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
        else:  # adagrad
            v = v + delta**2
        eta = lr * np.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1)) if bias_correction else lr
        w = w + eta * m / (np.sqrt(v) + tau)
    return w


@pytest.mark.parametrize("kind, bias_correction", [(k, False) for k in OPTIMIZERS] + [("adam", True)])
def test_server_optimizers_match_the_numpy_reference_over_chained_rounds(kind: str, bias_correction: bool) -> None:
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    rounds = [[(rng.normal(scale=0.1, size=(5, 3)).astype(np.float32), float(rng.integers(1, 50))) for _ in range(rng.integers(1, 5))]
              for _ in range(6)]
    s = StrategySettings(optimizer=kind, lr=0.05, momentum=0.7, beta1=0.8, beta2=0.95, tau=1e-3, bias_correction=bias_correction)
    strategy = build_strategy(s)
    weights = {"w": torch.from_numpy(w0.copy())}
    for updates in rounds:
        run_round(strategy, weights, [({"w": torch.from_numpy(u)}, n) for u, n in updates])
    expected = numpy_reference(kind, rounds, w0, s.lr, s.beta1, s.beta2, s.tau, s.momentum, bias_correction)
    np.testing.assert_allclose(weights["w"].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_optimizer_state_survives_a_checkpoint_round_trip(kind: str) -> None:
    s = StrategySettings(optimizer=kind, lr=0.05)
    rng = np.random.default_rng(3)
    updates = [[({"w": torch.from_numpy(rng.normal(size=4).astype(np.float32))}, 1.0)] for _ in range(4)]
    straight, resumed = build_strategy(s), build_strategy(s)
    a, b = {"w": torch.ones(4)}, {"w": torch.ones(4)}
    for u in updates[:2]:
        run_round(straight, a, u)
        run_round(resumed, b, u)
    restarted = build_strategy(s)
    restarted.load_state_dict({k: v.clone() for k, v in resumed.state_dict().items()})
    for u in updates[2:]:
        run_round(straight, a, u)
        run_round(restarted, b, u)
    assert torch.equal(a["w"], b["w"])


# ---------------------------------------------------------------- wrappers


def test_norm_clip_wrapper_bounds_parameters_and_counts() -> None:
    strategy = build_strategy(StrategySettings(max_update_norm=1.0))
    weights = {"w": torch.zeros(2), "n": torch.tensor(0)}
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}))
    aggregate = run_round(strategy, weights, [({"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(100)}, 1),
                                              ({"w": torch.tensor([0.3, 0.4]), "n": torch.tensor(100)}, 1)], context)
    assert aggregate.stats == {"clipped": 1}
    assert weights["w"].tolist() == pytest.approx([0.45, 0.6])  # mean of [0.6, 0.8] and [0.3, 0.4]
    assert int(weights["n"]) == 100  # buffers are outside the parameter bound (today's rule)


def test_weight_cap_wrapper_limits_a_claimed_count() -> None:
    strategy = build_strategy(StrategySettings(weight_cap=10))
    weights = {"w": torch.zeros(1)}
    aggregate = run_round(strategy, weights, [({"w": torch.tensor([1.0])}, 10_000_000), ({"w": torch.tensor([-1.0])}, 10)])
    assert aggregate.stats == {"capped": 1} and aggregate.total_weight == 20
    assert weights["w"].item() == pytest.approx(0.0)


def test_an_empty_shards_update_is_refused_as_it_folds_and_a_round_with_none_left_fails_cleanly() -> None:
    from fedtl.common.errors import UpdateRejected
    from fedtl.server.strategies.stacked import AggregationError

    strategy = build_strategy(StrategySettings(weighting="capped"), caps=lambda client: {"full": 5.0, "empty": 0.0}[client])
    aggregator = strategy.open({"w": torch.zeros(1)}, DELTA)
    with pytest.raises(UpdateRejected) as refused:  # more shards than examples: the client trained on nothing
        aggregator.add("empty", Update({"w": torch.tensor([9.0])}), 10)
    assert refused.value.reason == "empty_shard"
    with pytest.raises(AggregationError):  # nothing folded: the run loop retries the round, it does not crash
        aggregator.result()
    aggregator.add("full", Update({"w": torch.tensor([1.0])}), 10)
    aggregate = aggregator.result()
    assert aggregate.total_weight == 5 and aggregate.count == 1 and aggregate.stats == {"capped": 1}


updates = st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 1000), st.floats(1e-3, 1e3)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(updates)
def test_streaming_equals_batch_and_ignores_arrival_order(items) -> None:  # type: ignore[no-untyped-def]
    tensors = [({"w": torch.randn(20, 30, generator=torch.Generator().manual_seed(seed)) * scale}, n) for seed, n, scale in items]
    forward, backward = Accumulator(tensors[0][0]), Accumulator(tensors[0][0])
    for u, n in tensors:
        forward.add(u, n)
    for u, n in reversed(tensors):
        backward.add(u, n)
    batch = weighted_mean(tensors)["w"]
    assert torch.allclose(forward.mean()["w"], batch, rtol=1e-12, atol=1e-9)
    assert torch.equal(forward.mean()["w"].float(), backward.mean()["w"].float())


def test_folding_large_tensors_in_slices_is_exact() -> None:
    big = torch.randn(1_000_003)
    acc = Accumulator({"w": big})
    acc.add({"w": big}, 3)
    acc.add({"w": -big}, 1)
    assert torch.allclose(acc.mean()["w"], big.double() / 2, rtol=0, atol=1e-12)
