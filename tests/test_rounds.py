"""Round rules without a network: who may upload, when a round closes, what its record says."""

from __future__ import annotations

import pytest
import torch

from common.config import UpdateHeader, UpdateKind
from common.errors import NotSelected
from server.aggregation import Accumulator
from server.rounds import Round, reason_of
from server.validation import Expectation

EXPECT = Expectation(2, "b" * 64, UpdateKind.WEIGHT_DELTA, {"w": (torch.float32, (2,))}, frozenset({"w"}), 8)


def make(selected=("a", "b", "c"), target=3, min_fit=2) -> Round:  # type: ignore[no-untyped-def]
    return Round(2, 1, list(selected), target, min_fit, EXPECT, lambda name: None, Accumulator({"w": torch.zeros(2)}), 0.0)  # type: ignore[arg-type,return-value]


def header(**kw) -> UpdateHeader:  # type: ignore[no-untyped-def]
    base = dict(session_id="s", round=2, base_digest="b" * 64, num_examples=5, kind=UpdateKind.WEIGHT_DELTA, total_bytes=100,
                sha256="0" * 64, metrics={"train_loss": 1.0})
    base.update(kw)
    return UpdateHeader(**base)  # type: ignore[arg-type]


def test_admission_refusals_name_their_reason() -> None:
    rnd = make()
    for name, hdr, reason in [("z", header(), "not_selected"), ("a", header(round=1), "stale_round")]:
        with pytest.raises(NotSelected) as info:
            rnd.admit(name, hdr)
        assert info.value.reason == reason
    rnd.admit("a", header())
    rnd.accept("a", header(), clipped=False)
    with pytest.raises(NotSelected, match="already sent"):
        rnd.admit("a", header())
    rnd.close("deadline")
    with pytest.raises(NotSelected) as info:
        rnd.admit("b", header())
    assert info.value.reason == "round_closed"


def test_closes_at_the_target_under_over_selection() -> None:
    rnd = make(selected=("a", "b", "c", "d"), target=2)
    rnd.accept("a", header(), False)
    rnd.close_if_due()
    assert not rnd.closed
    rnd.accept("b", header(), False)
    rnd.close_if_due()
    assert rnd.closed and rnd.close_reason == "target of 2 reached" and rnd.done.is_set()


def test_waits_for_a_gone_client_unless_enough_answered() -> None:
    rnd = make(min_fit=2)
    rnd.accept("a", header(), False)
    rnd.gone.update({"b", "c"})
    rnd.close_if_due()
    assert not rnd.closed, "one answer cannot be aggregated: keep the round open for a reconnecting client"
    rnd.gone.discard("b")
    rnd.accept("b", header(), False)
    rnd.close_if_due()
    assert rnd.closed and rnd.close_reason == "1 selected client(s) disconnected" and rnd.can_aggregate


def test_record_weights_client_metrics_by_examples() -> None:
    rnd = make()
    rnd.accept("a", header(num_examples=1, metrics={"train_loss": 1.0, "eval_accuracy": 0.5, "eval_examples": 10}), False)
    rnd.accept("b", header(num_examples=3, metrics={"train_loss": 3.0, "eval_accuracy": 1.0, "eval_examples": 30}), True)
    record = rnd.record(5, bytes_down=123)
    assert record.train_loss == pytest.approx(2.5) and record.client_eval_accuracy == pytest.approx(0.875)
    assert record.examples == 4 and record.clipped == 1 and record.bytes_down == 123 and record.clients == ["a", "b"]


def test_reasons_are_stable_keys() -> None:
    from common.errors import DigestMismatch, TruncatedError

    assert reason_of(DigestMismatch("x")) == "digest_mismatch" and reason_of(TruncatedError("x")) == "truncated"
    assert reason_of(NotSelected("duplicate", "x")) == "duplicate"
