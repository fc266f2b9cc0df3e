"""FedAvg / FedSGD / server optimizers against hand-computed numbers; streaming equals batch."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from common.config import UpdateKind
from server.aggregation import Accumulator, ServerOptimizer, weighted_mean


def test_fedavg_weights_by_example_count() -> None:
    acc = Accumulator({"w": torch.zeros(2)})
    acc.add({"w": torch.tensor([1.0, 2.0])}, 1)
    acc.add({"w": torch.tensor([4.0, 8.0])}, 3)
    # (1*[1,2] + 3*[4,8]) / 4 = [13/4, 26/4]
    assert acc.mean()["w"].tolist() == [3.25, 6.5]
    assert acc.total_weight == 4 and acc.count == 2


def test_fedavg_step_moves_weights_by_the_mean_delta() -> None:
    weights = {"w": torch.tensor([1.0, 1.0]), "bn.running_mean": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(10)}
    mean = {"w": torch.tensor([0.5, -1.0], dtype=torch.float64), "bn.running_mean": torch.tensor([0.25], dtype=torch.float64),
            "bn.num_batches_tracked": torch.tensor(2.6, dtype=torch.float64)}
    ServerOptimizer("sgd", lr=1.0).step(weights, mean, {"w"}, UpdateKind.WEIGHT_DELTA)
    assert weights["w"].tolist() == [1.5, 0.0]
    assert weights["bn.running_mean"].tolist() == [0.25]
    assert int(weights["bn.num_batches_tracked"]) == 13  # integer buffers take the rounded mean delta


def test_fedsgd_step_is_w_minus_lr_times_mean_gradient() -> None:
    weights = {"w": torch.tensor([1.0, 2.0])}
    acc = Accumulator(weights)
    acc.add({"w": torch.tensor([1.0, 0.0])}, 2)
    acc.add({"w": torch.tensor([4.0, 3.0])}, 1)  # mean grad = [2, 1]
    ServerOptimizer("sgd", lr=0.1).step(weights, acc.mean(), {"w"}, UpdateKind.GRADIENT)
    assert weights["w"] == pytest.approx(torch.tensor([0.8, 1.9]))


def test_fedavgm_accumulates_server_momentum() -> None:
    weights = {"w": torch.tensor([0.0])}
    opt = ServerOptimizer("avgm", lr=1.0, momentum=0.5)
    delta = {"w": torch.tensor([1.0], dtype=torch.float64)}
    opt.step(weights, delta, {"w"}, UpdateKind.WEIGHT_DELTA)  # v = 1, w = 1
    opt.step(weights, delta, {"w"}, UpdateKind.WEIGHT_DELTA)  # v = 1.5, w = 2.5
    assert weights["w"].item() == pytest.approx(2.5)


def test_fedadam_matches_a_hand_computed_step() -> None:
    weights = {"w": torch.tensor([0.0, 0.0])}
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    d = torch.tensor([0.2, -0.4], dtype=torch.float64)
    opt.step(weights, {"w": d}, {"w"}, UpdateKind.WEIGHT_DELTA)
    m = 0.1 * d
    v = 0.01 * d * d
    expected = 0.1 * m / (v.sqrt() + 1e-3)
    assert weights["w"].double() == pytest.approx(expected, rel=1e-6)


def test_rejects_mismatched_updates_and_empty_means() -> None:
    acc = Accumulator({"w": torch.zeros(1)})
    with pytest.raises(ValueError):
        acc.add({"v": torch.zeros(1)}, 1)
    with pytest.raises(ValueError):
        acc.add({"w": torch.zeros(1)}, 0)
    with pytest.raises(ValueError):
        acc.mean()


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
