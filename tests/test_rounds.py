"""Round rules without a network: who may upload, when a phase closes, multi-phase rounds, what the record says."""

from __future__ import annotations

import pytest
import torch

from fedtl.common.config import UpdateHeader, UpdateKind
from fedtl.common.errors import NotSelected
from fedtl.common.metrics import ClientMetrics
from fedtl.server.refusals import reason_of
from fedtl.server.rounds import CloseReason, Phase, Round
from fedtl.server.strategies.mean import MeanAggregator
from fedtl.server.validation import Expectation

EXPECT = Expectation(2, "b" * 64, UpdateKind.WEIGHT_DELTA, {"w": (torch.float32, (2,))}, frozenset({"w"}))


def make(selected=("a", "b", "c"), target=3, min_fit=2, before: list[Phase] | None = None) -> Round:  # type: ignore[no-untyped-def]
    train = Phase("train", list(selected), target, min_fit, lambda name: f"task for {name}")  # type: ignore[arg-type,return-value]
    return Round(2, 1, list(selected), EXPECT, MeanAggregator({"w": torch.zeros(2)}), 0.0, [*(before or []), train])


def header(**kw) -> UpdateHeader:  # type: ignore[no-untyped-def]
    base = dict(session_id="s", round=2, base_digest="b" * 64, num_examples=5, kind=UpdateKind.WEIGHT_DELTA, total_bytes=100,
                sha256="0" * 64, metrics=ClientMetrics(train_loss=1.0))
    base.update(kw)
    return UpdateHeader(**base)  # type: ignore[arg-type]


def test_admission_refusals_name_their_reason() -> None:
    rnd = make()
    for name, hdr, reason in [("z", header(), "not_selected"), ("a", header(round=1), "stale_round")]:
        with pytest.raises(NotSelected) as info:
            rnd.admit(name, hdr)
        assert info.value.reason == reason
    phase = rnd.admit("a", header())
    assert phase.in_flight == {"a"}
    rnd.accept("a", header(), 0.5)
    rnd.settle("a", phase, 0.5)
    with pytest.raises(NotSelected, match="already sent"):
        rnd.admit("a", header())
    rnd.phase.close(CloseReason.DEADLINE, 1.0)
    with pytest.raises(NotSelected) as info:
        rnd.admit("b", header())
    assert info.value.reason == "round_closed"


def test_closes_at_the_target_under_over_selection() -> None:
    rnd = make(selected=("a", "b", "c", "d"), target=2)
    rnd.accept("a", header(), 1.0)
    assert not rnd.closed
    rnd.accept("b", header(), 2.0)
    assert rnd.closed and rnd.phase.close_reason == CloseReason.TARGET and rnd.phase.done.is_set() and rnd.phase.closed_at == 2.0


def test_waits_for_a_gone_client_unless_enough_answered() -> None:
    rnd = make(min_fit=2)
    rnd.accept("a", header(), 0.5)
    assert rnd.leave("b") and rnd.leave("c") and not rnd.leave("a")  # "a" answered: its leaving changes nothing
    rnd.phase.close_if_due(1.0)
    assert not rnd.closed, "one answer cannot be aggregated: keep the round open for a reconnecting client"
    assert rnd.rejoin("b") == "task for b" and "b" not in rnd.phase.gone  # a reconnected client gets its task again
    assert rnd.rejoin("a") is None  # it answered already: nothing to redo
    rnd.accept("b", header(), 2.0)
    rnd.phase.close_if_due(2.0)
    assert rnd.closed and rnd.phase.close_reason == CloseReason.GONE and rnd.phase.can_continue


def _quorum_round(wait: float | None) -> Round:
    train = Phase("train", ["a", "b", "c"], 3, 2, lambda name: f"task for {name}", straggler_wait=wait)  # type: ignore[arg-type,return-value]
    return Round(2, 1, ["a", "b", "c"], EXPECT, MeanAggregator({"w": torch.zeros(2)}), 100.0, [train])


def test_once_the_quorum_answered_the_rest_get_the_straggler_wait_and_the_round_closes_without_them() -> None:
    rnd = _quorum_round(None)  # the default: as long again as the quorum took, at least 10 s
    rnd.accept("a", header(), 110.0)
    assert rnd.phase.stragglers_until() is None, "no quorum yet: only the deadline closes the round"
    rnd.accept("b", header(), 130.0)  # the quorum took 30 s
    assert rnd.phase.stragglers_until() == 160.0 and rnd.phase.wake_in(140.0, 700.0, 30.0) == 20.0
    assert not rnd.phase.close_if_due(159.0)
    assert rnd.phase.close_if_due(160.0) and rnd.phase.close_reason == CloseReason.STRAGGLERS and rnd.phase.can_continue

    quick = _quorum_round(None)
    quick.accept("a", header(), 101.0)
    quick.accept("b", header(), 102.0)
    assert quick.phase.stragglers_until() == 112.0, "at least 10 s"

    uploading = _quorum_round(5.0)
    uploading.accept("a", header(), 101.0)
    uploading.accept("b", header(), 102.0)
    uploading.phase.in_flight.add("c")  # its update is arriving: the round takes it
    assert not uploading.phase.close_if_due(200.0)
    uploading.phase.in_flight.discard("c")
    uploading.accept("c", header(), 201.0)
    assert uploading.closed and uploading.phase.close_reason == CloseReason.ALL_ANSWERED

    never = Phase("train", ["a", "b"], 2, 1, lambda name: "")  # type: ignore[arg-type,return-value]
    never.answered["a"] = 1
    never.close_if_due(5.0)
    assert never.stragglers_until() == float("inf") and not never.closed, "protocol phases (secure aggregation) keep to the deadline"


def test_a_refused_client_is_out_and_over_selection_knows_how_many_are_missing() -> None:
    rnd = make(selected=("a", "b", "c"), target=3, min_fit=1)
    assert not rnd.refuse("a", "duplicate")  # a refusal that says nothing against the client keeps it in
    assert rnd.refuse("a", "corrupt") and "a" in rnd.phase.refused and not rnd.phase.pending("a")
    assert not rnd.refuse("a", "corrupt")  # already out
    assert rnd.shortfall() == 1
    rnd.leave("b")
    assert rnd.shortfall() == 2  # gone counts as missing until it comes back
    rnd.add(["d", "e"])
    assert rnd.shortfall() == 0 and rnd.selected[-2:] == ["d", "e"] and rnd.phase.pending("d")
    with pytest.raises(NotSelected) as info:
        rnd.admit("a", header())
    assert info.value.reason == "refused_earlier"


def test_the_selector_samples_reproducibly_and_finds_spares_only_with_over_selection() -> None:
    import random
    from dataclasses import replace

    from fedtl.server.config import parse_args
    from fedtl.server.selection import Selector

    schedule = parse_args(["--clients-per-round", "3", "--over-select", "0.5", "--min-clients", "2"], env={}).schedule
    connected = [f"c{i}" for i in range(10)]
    selected, target = Selector(schedule, random.Random(4)).open(connected)
    assert target == 3 and len(selected) == 5 and selected == Selector(schedule, random.Random(4)).open(connected)[0]
    spares = Selector(schedule, random.Random(4)).spares(2, connected, selected)
    assert len(spares) == 2 and not set(spares) & set(selected)
    assert Selector(replace(schedule, over_select=0.0), random.Random(4)).spares(2, connected, selected) == []


def test_a_round_with_phases_runs_them_in_order_each_expecting_the_survivors_of_the_last() -> None:
    keys = Phase("advertise", ["a", "b", "c"], 3, 2, lambda name: None)  # type: ignore[arg-type,return-value]
    rnd = make(before=[keys])
    with pytest.raises(NotSelected) as info:  # updates wait for their phase
        rnd.admit("a", header())
    assert info.value.reason == "wrong_phase"
    keys.answered.update({"a": 1, "c": 1})
    keys.gone.add("b")
    keys.close_if_due(1.0)
    assert keys.closed and keys.can_continue and not rnd.finished
    train = rnd.advance()
    assert train.name == "train" and train.expected == ["a", "c"] and train.target == 2
    with pytest.raises(NotSelected) as info:
        rnd.admit("b", header())  # dropped in the first phase: not part of the rest of the round
    assert info.value.reason == "not_selected"
    for name in ("a", "c"):
        rnd.admit(name, header())
        rnd.accept(name, header(), 2.0)
        rnd.settle(name, train, 2.0)
    assert rnd.finished and train.close_reason == CloseReason.ALL_ANSWERED


def test_record_weights_client_metrics_by_examples() -> None:
    rnd = make()
    rnd.accept("a", header(num_examples=1, metrics=ClientMetrics(train_loss=1.0, eval_accuracy=0.5, eval_examples=10, feature_cache=True,
                                                                  cache_build_seconds_train=2.5)), 0.0)
    rnd.accept("b", header(num_examples=3, metrics=ClientMetrics(train_loss=3.0, eval_accuracy=1.0, eval_examples=30)), 0.0)
    record = rnd.record(5, bytes_down=123)
    assert record.train_loss == pytest.approx(2.5) and record.client_eval_accuracy == pytest.approx(0.875)
    assert record.examples == 4 and record.bytes_down == 123 and record.bytes_up == 200 and record.clients == ["a", "b"]
    assert record.clients_cached == 1 and record.client_cache_build_seconds == 2.5
    assert record.to_json()["test_accuracy"] is None  # not measured: null, not NaN


def test_record_names_the_worst_tenth_of_clients() -> None:
    names = [f"c{i:02d}" for i in range(20)]
    rnd = make(selected=names, target=20, min_fit=1)
    for i, name in enumerate(names):  # accuracies 0.05 .. 1.00; personal heads 0.5 .. 0.975
        rnd.accept(name, header(num_examples=10, metrics=ClientMetrics(eval_accuracy=(i + 1) / 20, eval_examples=10,
                                                                       personal_accuracy=0.5 + i / 40)), 0.0)
    record = rnd.record(5, bytes_down=0)
    assert record.client_eval_worst_decile == pytest.approx((0.05 + 0.10) / 2)  # the worst 2 of 20
    assert record.client_personal_worst_decile == pytest.approx((0.5 + 0.525) / 2)
    assert record.client_eval_accuracy == pytest.approx(0.525)
    assert "worst 10% of clients 7.50%, personal 51.25%" in record.line()
    lone = make(selected=("a",), target=1, min_fit=1)
    lone.accept("a", header(metrics=ClientMetrics(eval_accuracy=0.3, eval_examples=4)), 0.0)
    assert lone.record(5, bytes_down=0).client_eval_worst_decile == pytest.approx(0.3)  # one client: the worst tenth is that one
    assert make().record(5, bytes_down=0).to_json()["client_eval_worst_decile"] is None


def test_reasons_are_stable_keys() -> None:
    from fedtl.common.errors import DigestMismatch, TruncatedError

    assert reason_of(DigestMismatch("x")) == "digest_mismatch" and reason_of(TruncatedError("x")) == "truncated"
    assert reason_of(NotSelected("duplicate", "x")) == "duplicate"


def test_a_swarm_of_sessions_from_one_address_gets_no_more_of_a_round_than_any_other_address() -> None:
    import random

    from fedtl.server.selection import select_clients

    swarm = {f"sybil{i:04d}": "203.0.113.7" for i in range(1000)}
    honest = {f"site{i}": f"198.51.100.{i + 1}" for i in range(4)}
    addresses = {**swarm, **honest}
    for seed in range(20):
        picked = select_clients(addresses, 4, random.Random(seed), addresses)
        assert len(picked) == 4 and sum(name in swarm for name in picked) <= 1, picked
    two_sites = {f"a{i}": "198.51.100.1" for i in range(3)} | {f"b{i}": "198.51.100.2" for i in range(3)}
    assert all(sorted(n[0] for n in select_clients(two_sites, 4, random.Random(seed), two_sites)) == ["a", "a", "b", "b"]
               for seed in range(10)), "few addresses: turns alternate, and the round still fills"
    local = {f"c{i}": "127.0.0.1" for i in range(6)}  # a local federation samples exactly as without addresses
    assert select_clients(local, 3, random.Random(5), local) == select_clients(local, 3, random.Random(5))
    assert select_clients(local, 3, random.Random(5), {}) == select_clients(local, 3, random.Random(5))


def test_the_registry_keeps_each_sessions_address() -> None:
    from fedtl.common.config import Hello
    from fedtl.server.registry import Registry
    from fedtl.server.settings.data import PartitionPlan

    registry = Registry(PartitionPlan(0, "iid", 0.5, 2, 0, 0.0, 0))
    registry.connect(Hello("a", identity="a" * 8), 0.0, "198.51.100.1")
    registry.connect(Hello("b", identity="b" * 8), 0.0)
    assert registry.addresses() == {"a": "198.51.100.1", "b": ""}


def test_one_address_holds_at_most_its_share_of_sessions_and_shards() -> None:
    import pytest

    from fedtl.common.config import Hello
    from fedtl.common.errors import Overloaded
    from fedtl.server.registry import Registry
    from fedtl.server.settings.data import PartitionPlan

    registry = Registry(PartitionPlan(0, "iid", 0.5, 2, 0, 0.0, 0), per_address=3)
    for i in range(3):
        registry.connect(Hello(f"sybil{i}", identity="s" * 8), 0.0, "203.0.113.7")
    with pytest.raises(Overloaded, match=r"203\.0\.113\.7 already has 3 clients connected \(--max-clients-per-address\)"):
        registry.connect(Hello("sybil3", identity="s" * 8), 0.0, "203.0.113.7")
    registry.connect(Hello("sybil0", identity="s" * 8), 1.0, "203.0.113.7")  # a client reconnecting keeps its place
    for i in range(4):  # other addresses, loopback and unknown ones are not counted together
        registry.connect(Hello(f"site{i}", identity=f"{i}" * 8), 0.0, ["198.51.100.1", "127.0.0.1", "127.0.0.1", ""][i])
    assert len(registry) == 7
    assert sorted(registry.fix_partitions().values()) == list(range(7)), "the swarm got 3 of 7 shards, not all of them"
    assert sum(1 for name, shard in registry.partitions.items() if name.startswith("sybil")) == 3
    registry.disconnect(registry.by_name("sybil1"))  # type: ignore[arg-type]
    registry.connect(Hello("sybil9", identity="s" * 8), 2.0, "203.0.113.7")  # a freed place can be taken again
