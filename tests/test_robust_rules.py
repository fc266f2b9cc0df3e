"""Robust aggregation rules against independent, deliberately naive numpy references: random updates and weights,
ties, f at its limit, and the refusals of what cannot work."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from fedtl.common.config import UpdateKind
from fedtl.server.strategies import StrategySettings, build_strategy
from fedtl.server.strategies.base import RoundContext
from fedtl.server.strategies.bulyan import Bulyan
from fedtl.server.strategies.dnc import SAMPLE, DivideAndConquer, kept, outlier_scores, sample_columns
from fedtl.server.strategies.fltrust import FLTrust
from fedtl.server.strategies.geomedian import GeometricMedian
from fedtl.server.strategies.krum import Krum, krum_select
from fedtl.server.strategies.median import Median
from fedtl.server.strategies.stacked import AggregationError, column_groups
from fedtl.server.strategies.trimmed_mean import TrimmedMean
from fedtl.server.validation import Update

CONTEXT = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}))


def combine(rule, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Through the real aggregator: rows in as named tensors, the combined update out."""
    aggregator = rule.open({"w": torch.zeros(rows.shape[1])}, CONTEXT)
    for i, (row, weight) in enumerate(zip(rows, weights)):
        aggregator.add(f"c{i}", Update({"w": torch.from_numpy(row.astype(np.float32))}), float(weight))
    return aggregator.result().tensors["w"].numpy()


# ---------------------------------------------------------------- naive references (loops, no vectorisation)


def ref_weighted_median(column: list[float], weights: list[float]) -> float:
    pairs = sorted(zip(column, weights), key=lambda p: p[0])
    total, running = sum(weights), 0.0
    for value, weight in pairs:
        running += weight
        if running >= total / 2:
            return value
    return pairs[-1][0]


def ref_trimmed(column: list[float], fraction: float) -> float:
    values = sorted(column)
    k = int(fraction * len(values))
    kept = values[k : len(values) - k]
    return sum(kept) / len(kept)


def ref_krum(rows: np.ndarray, f: int, m: int) -> list[int]:
    n = len(rows)
    scores = []
    for i in range(n):
        d = sorted(float(((rows[i] - rows[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return sorted(range(n), key=lambda i: (scores[i], i))[:m]


def ref_bulyan(rows: np.ndarray, f: int) -> np.ndarray:
    remaining, chosen = list(range(len(rows))), []
    while len(chosen) < len(rows) - 2 * f:
        sub = rows[remaining]
        k = max(1, len(remaining) - f - 2)
        scores = [sum(sorted(float(((sub[i] - sub[j]) ** 2).sum()) for j in range(len(sub)) if j != i)[:k]) for i in range(len(sub))]
        best = remaining[min(range(len(sub)), key=lambda i: (scores[i], i))]
        chosen.append(best)
        remaining.remove(best)
    picked = rows[sorted(chosen)]
    beta = len(chosen) - 2 * f
    out = []
    for col in picked.T:
        median = np.median(col)
        closest = sorted(range(len(col)), key=lambda i: (abs(col[i] - median), i))[:beta]
        out.append(np.mean(col[closest]))
    return np.asarray(out)


matrices = st.tuples(st.integers(3, 9), st.integers(1, 6), st.integers(0, 2**31), st.booleans())


def _rows(n: int, d: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, d)).astype(np.float32)
    if ties:
        rows = np.round(rows).astype(np.float32)  # many equal values
    return rows, rng.integers(1, 50, size=n).astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_median_matches_the_reference_weighted_and_not(case) -> None:  # type: ignore[no-untyped-def]
    rows, weights = _rows(*case)
    np.testing.assert_allclose(combine(Median(), rows, weights), np.median(rows.astype(np.float64), axis=0), rtol=1e-6)
    expected = [ref_weighted_median(list(rows[:, j]), list(weights)) for j in range(rows.shape[1])]
    np.testing.assert_allclose(combine(Median(weighted=True), rows, weights), expected, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from([0.0, 0.1, 0.2, 0.34]))
def test_trimmed_mean_matches_the_reference_weighted_and_not(case, fraction) -> None:  # type: ignore[no-untyped-def]
    rows, weights = _rows(*case)
    expected = [ref_trimmed(list(rows[:, j].astype(np.float64)), fraction) for j in range(rows.shape[1])]
    np.testing.assert_allclose(combine(TrimmedMean(fraction), rows, weights), expected, rtol=1e-6, atol=1e-9)
    # weighted by integer weights = unweighted over each row repeated weight times (when the cut falls on whole rows)
    small = np.minimum(weights, 3).astype(int)
    repeated = np.repeat(rows, small, axis=0)
    cut_is_whole = abs(fraction * small.sum() - round(fraction * small.sum())) < 1e-9
    if cut_is_whole:
        expected = [ref_trimmed(list(repeated[:, j].astype(np.float64)), fraction) for j in range(rows.shape[1])]
        np.testing.assert_allclose(combine(TrimmedMean(fraction, weighted=True), rows, small.astype(float)), expected, rtol=1e-6, atol=1e-9)


def test_the_default_trimmed_mean_trims_one_client_even_where_ten_percent_is_none() -> None:
    from fedtl.server.config import parse_args

    honest = np.array([[1.0, 2.0], [1.2, 2.2], [0.8, 1.8]])
    rows = np.vstack([honest, -10 * honest.mean(axis=0, keepdims=True)])  # one sign-flipped, scaled update of 4
    flags = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", "--aggregation", "trimmed-mean"]
    default = parse_args(flags, env={}).strategy.rule_options
    assert default == {"fraction": 0.1, "at_least": 1}
    expected = [ref_trimmed_k(list(rows[:, j]), 1) for j in range(2)]
    np.testing.assert_allclose(combine(TrimmedMean(**default), rows, np.ones(4)), expected, rtol=1e-6)
    assert np.all(combine(TrimmedMean(**default), rows, np.ones(4)) > 0.7), "the attacker is outvoted"
    weights = np.array([2.0, 2.0, 2.0, 3.0])  # the attacker also claims the most data: its whole weight is trimmed
    assert np.all(combine(TrimmedMean(**default, weighted=True), rows, weights) > 0.7)
    asked = parse_args([*flags, "--trim-fraction", "0.1"], env={}).strategy.rule_options
    assert asked == {"fraction": 0.1, "at_least": 0} and np.all(combine(TrimmedMean(**asked), rows, np.ones(4)) < 0), "as asked"
    assert "at least 1 client" in TrimmedMean(**default).describe()
    assert np.allclose(combine(TrimmedMean(**default), rows[:2], np.ones(2)), rows[:2].mean(axis=0)), "two: nothing to trim"


def ref_trimmed_k(column: list[float], k: int) -> float:
    ordered = sorted(column)
    return sum(ordered[k : len(ordered) - k]) / (len(ordered) - 2 * k)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(0, 3), st.integers(1, 6), st.integers(0, 2**31))
def test_krum_and_multi_krum_pick_what_the_reference_picks(f, extra, d, seed) -> None:  # type: ignore[no-untyped-def]
    n = 2 * f + 3 + extra  # f at its limit when extra is 0
    rows, weights = _rows(n, d, seed, False)
    for m in (1, 3):
        chosen = ref_krum(rows.astype(np.float64), f, m)
        np.testing.assert_allclose(combine(Krum(f, m), rows, weights), rows[chosen].astype(np.float64).mean(axis=0), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(0, 2), st.integers(1, 5), st.integers(0, 2**31))
def test_bulyan_matches_the_reference(f, extra, d, seed) -> None:  # type: ignore[no-untyped-def]
    rows, weights = _rows(4 * f + 3 + extra, d, seed, False)
    np.testing.assert_allclose(combine(Bulyan(f), rows, weights), ref_bulyan(rows.astype(np.float64), f), rtol=1e-6, atol=1e-9)


def test_rules_that_need_more_updates_say_so() -> None:
    rows, weights = _rows(4, 3, 0, False)
    with pytest.raises(AggregationError, match="at least 5 updates"):
        combine(Krum(1, 1), rows, weights)
    with pytest.raises(AggregationError, match="at least 7 updates"):
        combine(Bulyan(1), rows, weights)


def test_the_geometric_median_minimises_the_sum_of_distances_and_resists_an_outlier() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(9, 4))
    rows[0] = 1e6  # one wild update
    z = combine(GeometricMedian(), rows, np.ones(9))

    def cost(p: np.ndarray) -> float:
        return float(np.linalg.norm(rows - p, axis=1).sum())

    assert np.linalg.norm(z) < 2, "the outlier must not drag it away"
    for step in (1e-3, 1e-2):
        for direction in np.eye(4):
            assert cost(z) <= cost(z + step * direction) + 1e-6 and cost(z) <= cost(z - step * direction) + 1e-6


def test_fltrust_weights_by_direction_and_rescales_to_the_root_update() -> None:
    root = np.array([1.0, 0.0])
    rule = FLTrust(root_update=lambda: {"w": torch.tensor(root)})
    rows = np.array([[10.0, 0.0], [-5.0, 0.0], [0.0, 3.0]], dtype=np.float32)  # same way, opposite, orthogonal
    out = combine(rule, rows, np.ones(3))
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-7)  # only the first counts, scaled to |root| = 1


def test_spilled_updates_give_the_same_result_as_in_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows, weights = _rows(7, 50, 3, False)
    spilled = Median(spill_dir=tmp_path, in_memory_bytes=1)
    np.testing.assert_array_equal(combine(spilled, rows, weights), combine(Median(), rows, weights))
    assert not list(tmp_path.iterdir()), "the spill file is removed with the round"


def test_weighting_modes_and_the_adaptive_norm_bound() -> None:
    def run(settings: StrategySettings, updates, caps=None):  # type: ignore[no-untyped-def]
        strategy = build_strategy(settings, caps=caps)
        aggregator = strategy.open({"w": torch.zeros(2)}, CONTEXT)
        for i, (u, n) in enumerate(updates):
            aggregator.add(f"c{i}", Update({"w": torch.tensor(u)}), n)
        return aggregator.result()

    claims = [([1.0, 0.0], 10.0), ([0.0, 1.0], 10_000_000.0)]
    assert run(StrategySettings(weighting="uniform"), claims).tensors["w"].tolist() == [0.5, 0.5]
    capped = run(StrategySettings(), claims, caps=lambda client: 10.0)
    assert capped.tensors["w"].tolist() == [0.5, 0.5] and capped.stats == {"capped": 1}
    assert run(StrategySettings(weighting="examples"), claims).tensors["w"][1] > 0.99
    adaptive = build_strategy(StrategySettings(norm_quantile=0.5))
    for round_updates in ([[3.0, 4.0], [0.6, 0.8]], [[30.0, 40.0], [0.6, 0.8]]):
        aggregator = adaptive.open({"w": torch.zeros(2)}, CONTEXT)
        for i, u in enumerate(round_updates):
            aggregator.add(f"c{i}", Update({"w": torch.tensor(u)}), 1.0)
        last = aggregator.result()
    # round 1 learnt the median norm (3.0); round 2 clips the norm-50 update to 3.0
    assert last.stats == {"clipped": 1}
    assert torch.allclose(last.tensors["w"], torch.tensor([(1.8 + 0.6) / 2, (2.4 + 0.8) / 2], dtype=torch.float64))


def test_the_adaptive_bound_holds_in_round_one_from_the_rounds_own_norms() -> None:
    adaptive = build_strategy(StrategySettings(norm_quantile=0.5))
    aggregator = adaptive.open({"w": torch.zeros(2)}, CONTEXT)
    honest = [[0.6, 0.8], [0.3, 0.4], [0.9, 1.2]]  # norms 1, 0.5, 1.5: the median is 1
    for i, u in enumerate([*honest, [-600.0, -800.0]]):  # one x1000 sign-flipped update, in round 1
        aggregator.add(f"c{i}", Update({"w": torch.tensor(u)}), 1.0)
    first = aggregator.result()
    bound = float(np.quantile([1.0, 0.5, 1.5, 1000.0], 0.5))  # 1.25
    clipped = [[0.6, 0.8], [0.3, 0.4], [0.75, 1.0], [-0.75, -1.0]]  # the norm-1.5 and norm-1000 updates clipped to 1.25
    assert first.stats["clipped"] == 2 and bound == 1.25
    assert torch.allclose(first.tensors["w"], torch.tensor(clipped, dtype=torch.float64).mean(dim=0))
    assert first.tensors["w"].norm() < 1, "the attacker moved the mean by at most its share of the bound"
    from fedtl.server.strategies.clipping import NormClip

    clip = adaptive
    while not isinstance(clip, NormClip):
        clip = clip.inner  # type: ignore[attr-defined]
    assert abs(clip.running["parameters"] - 1.25) < 1e-6  # later rounds stream, bounded by what round 1 learnt


def _zero(blob):  # type: ignore[no-untyped-def]
    from fedtl.common import tensorcodec

    return {k: torch.zeros_like(v) for k, v in tensorcodec.decode(blob).tensors.items()}


def test_a_median_round_through_the_real_server_and_a_poisoned_aggregate_is_never_applied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from inprocess import RawClient, running_server
    from recording_sink import Recorder

    from fedtl.server.events import RoundClosed, RunFinished

    recorder = Recorder()

    async def scenario() -> None:
        args = ["--min-clients", "3", "--rounds", "2", "--aggregation", "median", "--eval-every", "1", "--keep-round-models"]
        async with running_server(tmp_path, args, sinks=[recorder]) as (coordinator, port):
            clients = [RawClient(port, n) for n in ("a", "b", "c")]
            for c in clients:
                await c.connect()
            tasks = [(await c.next_instruction()).train for c in clients]
            base = _zero(await clients[0].download(tasks[0].base_digest))
            before = {k: v.clone() for k, v in coordinator.model.state.items()}
            values = {"a": 1.0, "b": 2.0, "c": 1000.0}  # the median ignores c
            for c, t in zip(clients, tasks):
                update = {k: torch.full_like(v, values[c.name] * 1e-3) if v.is_floating_point() and "running" not in k else v
                          for k, v in base.items()}
                await c.upload_raw(c.update_messages(t, update, 10))
            first = (await recorder.wait_for(RoundClosed)).record
            assert first.applied
            w = coordinator.model.state["fc.weight"]
            assert torch.allclose(w.double(), before["fc.weight"].double() + 2e-3, atol=1e-7)  # median of 1e-3, 2e-3, 1
            tasks = [(await c.next_instruction()).train for c in clients]
            kept = {k: v.clone() for k, v in coordinator.model.state.items()}
            for c, t in zip(clients, tasks):  # all three send huge but finite values: the outputs overflow
                update = {k: torch.full_like(v, 3e38) if v.is_floating_point() and "running" not in k else v for k, v in base.items()}
                await c.upload_raw(c.update_messages(t, update, 10))
            second = (await recorder.wait_for(RoundClosed, lambda e: e.record.round == 2)).record
            assert not second.applied and "NOT APPLIED" in second.line()
            assert all(torch.equal(coordinator.model.state[k], kept[k]) for k in kept), "the model stayed as it was"
            assert (await recorder.wait_for(RunFinished)).outcome == "completed"
            for c in clients:
                await c.close()

    asyncio.run(scenario())
    from fedtl.common import checkpoint

    final = checkpoint.load_tensors(tmp_path / "run" / "final_model.safetensors").tensors
    assert all(bool(torch.isfinite(t).all()) for t in final.values() if t.is_floating_point())


def test_krum_measures_parameters_and_buffers_each_on_their_own_scale() -> None:
    """Full fine-tuning: BatchNorm variances move far more than the weights, so a 10x weight update hides in plain
    distances; with each group scaled by its median norm, Krum and Bulyan see it (bench/robustness found this)."""
    rng = np.random.default_rng(0)
    n, honest = 10, 8
    weights_part = rng.normal(0.0, 0.01, (n, 50)) + 0.02  # small, similar weight updates
    weights_part[honest:] *= 10  # the scaling attack on the weights only
    buffers_part = rng.normal(0.0, 30.0, (n, 200))  # large, noisy variance updates, honest for everyone
    rows = np.hstack([weights_part, buffers_part]).astype(np.float32)
    template = {"w": torch.zeros(50), "bn.running_var": torch.zeros(200)}
    groups = column_groups(template, frozenset({"w"}))
    attackers = set(range(honest, n))
    assert attackers & set(krum_select(rows, 2, 6).tolist())  # plain distances: the attack is invisible
    assert not attackers & set(krum_select(rows, 2, 6, groups).tolist())
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset({"w"}))
    for rule in (Krum(byzantine=2, select=6), Bulyan(byzantine=1), DivideAndConquer(byzantine=2)):
        aggregator = rule.open(template, context)
        for i, row in enumerate(rows):
            aggregator.add(f"c{i}", Update({"w": torch.from_numpy(row[:50].copy()), "bn.running_var": torch.from_numpy(row[50:].copy())}), 1.0)
        combined = aggregator.result().tensors["w"].numpy()
        assert abs(combined.mean() - 0.02) < 0.01, (rule.name, combined.mean())  # the attackers' 0.2 is not in it


def _min_max(honest: np.ndarray, attackers: int) -> np.ndarray:
    """Min-max (Shejwalkar & Houmansadr 2021) against these honest rows: mean - gamma * unit(mean), gamma as large as keeps
    the forged row's largest distance to an honest one within the largest honest-honest distance."""
    mean = honest.mean(axis=0)
    direction = -mean / np.linalg.norm(mean)
    limit = max(np.linalg.norm(a - b) for a in honest for b in honest)
    low, high = 0.0, 1e3
    for _ in range(60):
        gamma = (low + high) / 2
        low, high = (gamma, high) if np.linalg.norm(honest - (mean + gamma * direction), axis=1).max() <= limit else (low, gamma)
    return np.vstack([honest, np.repeat((mean + low * direction)[None], attackers, axis=0)])


def test_dnc_drops_a_min_max_update_that_multi_krum_averages_in() -> None:
    rng = np.random.default_rng(3)
    honest = rng.normal(1.0, 1.0, (8, 400))  # skewed clients: a shared direction, large individual spread
    rows = _min_max(honest, 2).astype(np.float32)
    attackers = {8, 9}
    assert attackers <= set(krum_select(rows, 2, 8).tolist()), "min-max sits among the honest rows for Krum"
    assert not attackers & set(kept(rows, 2, np.random.default_rng(0)).tolist())
    out = combine(DivideAndConquer(byzantine=2), rows, np.ones(10))
    np.testing.assert_allclose(out.mean(), 1.0, atol=0.15)  # the honest mean's level; the attackers pull toward -gamma


def test_dnc_drops_attackers_that_do_not_collude_where_one_direction_shows_only_one() -> None:
    rng = np.random.default_rng(4)
    rows = (rng.normal(0, 1, (10, 400)) + rng.normal(0, 1, 400) * 0.3).astype(np.float32)  # skewed: diverse honest directions
    rows[8:] *= 10  # two scaling attackers, each its own way
    along_one = set(np.argsort(outlier_scores(rows.astype(np.float64), 1))[8:].tolist())
    assert not {8, 9} <= along_one, "the paper's single direction keeps one of them here"
    assert not {8, 9} & set(kept(rows, 2, np.random.default_rng(0)).tolist())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3), st.integers(1, 4), st.integers(2, 30), st.integers(0, 2**31))
def test_dnc_keeps_all_but_at_most_passes_times_f_and_averages_exactly_those(f, extra, d, seed) -> None:  # type: ignore[no-untyped-def]
    n = 2 * f + 1 + extra
    rows, weights = _rows(n, d, seed, False)
    chosen = kept(rows, f, np.random.default_rng([0, 1]), ()) if f else np.arange(n)
    assert n - 5 * f <= len(chosen) <= n - f  # each of the 5 passes drops f; passes may drop the same ones
    if len(chosen):
        np.testing.assert_allclose(combine(DivideAndConquer(byzantine=f), rows, weights), rows[chosen].astype(np.float64).mean(axis=0),
                                   rtol=1e-6, atol=1e-9)


def test_dnc_samples_distinct_columns_from_every_slice_and_the_same_ones_for_the_same_round() -> None:
    span = [slice(5, 10), slice(100, 103)]
    rng = np.random.default_rng(0)
    assert sorted(sample_columns(span, rng).tolist()) == [5, 6, 7, 8, 9, 100, 101, 102], "fewer than SAMPLE: all of them"
    big = [slice(0, 3 * SAMPLE), slice(10 * SAMPLE, 11 * SAMPLE)]
    picked = sample_columns(big, np.random.default_rng(1))
    assert len(picked) == SAMPLE == len(set(picked.tolist()))
    assert all(0 <= c < 3 * SAMPLE or 10 * SAMPLE <= c < 11 * SAMPLE for c in picked.tolist())
    assert np.array_equal(picked, sample_columns(big, np.random.default_rng(1)))
    rows, weights = _rows(9, 20, 5, False)
    assert np.array_equal(combine(DivideAndConquer(byzantine=2), rows, weights), combine(DivideAndConquer(byzantine=2), rows, weights))


def test_dnc_needs_more_honest_updates_than_dishonest_ones() -> None:
    rows, weights = _rows(4, 3, 0, False)
    with pytest.raises(AggregationError, match="at least 5 updates"):
        combine(DivideAndConquer(byzantine=2), rows, weights)
