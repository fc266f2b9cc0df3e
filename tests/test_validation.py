from __future__ import annotations

import math

import pytest
import torch

from fedtl.common.config import UpdateHeader, UpdateKind
from fedtl.common.errors import UpdateRejected
from fedtl.common.metrics import ClientMetrics
from fedtl.server.strategies.clipping import clip_to_norm
from fedtl.server.validation import Expectation, Update, check_header, check_tensors

SPECS = {"w": (torch.float32, (2, 2)), "n": (torch.int64, ())}
EXPECT = Expectation(3, "b" * 64, UpdateKind.WEIGHT_DELTA, SPECS, frozenset({"w"}), max_examples=1000)
PAYLOAD = 24  # 4 float32 + 1 int64


def header(**changes) -> UpdateHeader:  # type: ignore[no-untyped-def]
    base = dict(session_id="s", round=3, base_digest="b" * 64, num_examples=10, kind=UpdateKind.WEIGHT_DELTA, total_bytes=200, sha256="0" * 64)
    base.update(changes)
    return UpdateHeader(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"round": 2}, "stale_round"),
        ({"base_digest": "c" * 64}, "wrong_base"),
        ({"kind": UpdateKind.GRADIENT}, "wrong_kind"),
        ({"num_examples": 0}, "bad_num_examples"),
        ({"num_examples": 1001}, "bad_num_examples"),
        ({"encoding": "zstd"}, "wrong_encoding"),
        ({"total_bytes": 10**9}, "oversize"),
        ({"total_bytes": PAYLOAD - 1}, "undersize"),
        ({"metrics": ClientMetrics(train_loss=math.nan)}, "bad_metrics"),
        ({"metrics": ClientMetrics(custom={"own": math.inf})}, "bad_metrics"),
    ],
)
def test_header_checks(changes: dict, reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        check_header(EXPECT, header(**changes))
    assert info.value.reason == reason
    check_header(EXPECT, header())


def test_size_bounds_come_from_the_codec() -> None:
    least, most = EXPECT.size_bounds("raw")
    assert least == PAYLOAD and most > least
    check_header(EXPECT, header(total_bytes=least))
    check_header(EXPECT, header(total_bytes=most))


@pytest.mark.parametrize(
    "tensors, reason",
    [
        ({"w": torch.zeros(2, 2)}, "wrong_names"),
        ({"w": torch.zeros(2, 2), "n": torch.tensor(0), "x": torch.zeros(1)}, "wrong_names"),
        ({"w": torch.zeros(4), "n": torch.tensor(0)}, "wrong_shape"),
        ({"w": torch.zeros(2, 2, dtype=torch.float64), "n": torch.tensor(0)}, "wrong_shape"),
        ({"w": torch.tensor([[0.0, math.inf], [0.0, 0.0]]), "n": torch.tensor(0)}, "non_finite"),
        ({"w": torch.tensor([[0.0, math.nan], [0.0, 0.0]]), "n": torch.tensor(0)}, "non_finite"),
    ],
)
def test_tensor_checks(tensors: dict, reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        check_tensors(EXPECT, tensors)
    assert info.value.reason == reason
    check_tensors(EXPECT, {"w": torch.zeros(2, 2), "n": torch.tensor(0)})


def test_norm_bound_scales_parameters_only() -> None:
    update = Update({"w": torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "n": torch.tensor(100)})
    assert update.norm({"w"}) == pytest.approx(5.0)
    assert clip_to_norm(update, frozenset({"w"}), 1.0)
    assert update.norm({"w"}) == pytest.approx(1.0) and int(update.tensors["n"]) == 100
    assert not clip_to_norm(update, frozenset({"w"}), 2.0)


def test_finite_but_huge_values_are_not_mistaken_for_infinities() -> None:
    big = {"w": torch.full((2, 2), 3e38), "n": torch.tensor(0)}  # squares overflow float32, values do not
    update = check_tensors(EXPECT, big)
    assert update.norms["w"] == pytest.approx(6e38, rel=1e-6) and update.norm({"w"}) == pytest.approx(6e38, rel=1e-6)
    with pytest.raises(UpdateRejected):
        check_tensors(EXPECT, {"w": torch.tensor([[3e38, -math.inf], [0.0, 0.0]]), "n": torch.tensor(0)})


def test_a_buffer_update_that_would_make_a_variance_negative_is_refused() -> None:
    expect = Expectation(3, "b" * 64, UpdateKind.WEIGHT_DELTA, {"bn.running_var": (torch.float32, (2,))}, frozenset(),
                         positive={"bn.running_var": torch.tensor([1.0, 1.0])})
    check_tensors(expect, {"bn.running_var": torch.tensor([-0.5, 2.0])})  # 0.5 and 3.0: fine
    # a dead channel's variance decays to exactly 0 in honest full fine-tuning (seen on EfficientNet-Lite0): BatchNorm's eps
    # keeps that harmless, so it must pass
    check_tensors(expect, {"bn.running_var": torch.tensor([-1.0, 0.0])})
    with pytest.raises(UpdateRejected) as info:
        check_tensors(expect, {"bn.running_var": torch.tensor([-101.0, 0.0])})  # the -100 attack
    assert info.value.reason == "invalid_buffer"
