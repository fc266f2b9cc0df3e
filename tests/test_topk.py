"""Top-k sparsification (topk:F, topk+int8:F): what is sent (the largest F of all entries, across tensors), how compactly
(Rice-coded indices), every malformed blob refused precisely,
O(k) folds that equal the dense mean, client-side error feedback (kept across restarts, reset when its run, codec or
model changes), and a real federation that uploads top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.client.error_feedback import ErrorFeedback
from fedtl.common import codecs, tensorcodec
from fedtl.common.codecs import UpdateSource, packing
from fedtl.common.codecs.int8 import SCALES
from fedtl.common.codecs.packing import EXACT, INDEX_B, INDEX_HIGH, INDEX_LOW
from fedtl.common.codecs.sparse import VALUES
from fedtl.common.errors import ConfigError, WireFormatError
from fedtl.server.strategies.mean import Accumulator, weighted_mean


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(16, 8, 3, 3, generator=g), "fc.weight": torch.randn(10, 300, generator=g),
            "fc.bias": torch.randn(10, generator=g), "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64)}


def _specs(update: dict[str, torch.Tensor]) -> dict:
    return {n: (t.dtype, tuple(t.shape)) for n, t in update.items()}


def test_names_parse_to_canonical_codecs_and_bad_fractions_are_refused() -> None:
    assert codecs.get("topk:0.010").name == "topk:0.01" and codecs.get("topk+int8:0.1").name == "topk+int8:0.1"
    for bad in ("topk", "topk:", "topk:0", "topk:1.5", "topk:nan", "topk:-0.1", "topk+int8:x"):
        with pytest.raises(ConfigError, match="fraction"):
            codecs.get(bad)
    with pytest.raises(ConfigError, match="topk:FRACTION"):
        codecs.get("gzip")


@pytest.mark.parametrize("name", ["topk:0.05", "topk+int8:0.05"])
def test_exactly_the_largest_entries_of_the_whole_update_travel_and_the_rest_decode_as_zero(name: str) -> None:
    update = _update()
    update["fc.weight"] *= 10  # a layer that moves more gets more of the budget, as a new head does
    codec = codecs.get(name)
    blob = codec.encode(UpdateSource.of(update))
    low, high = codec.size_bounds(_specs(update))
    assert low <= len(blob) <= high
    dense, support = codec.decode_update(bytes(blob), _specs(update))
    assert int(dense["bn.num_batches_tracked"]) == 7 and "bn.num_batches_tracked" not in support
    floats = ("conv.weight", "fc.weight", "fc.bias")
    flat = torch.cat([update[n].reshape(-1) for n in floats])
    k = math.ceil(0.05 * flat.numel())
    threshold = float(torch.topk(flat.abs(), k).values[-1])
    assert sum(support[n].numel() for n in floats) == k
    assert support["fc.weight"].numel() == k  # every one: per tensor it would have had 5 % of its entries
    for n in floats:
        got, x = dense[n].reshape(-1), update[n].reshape(-1)
        assert bool((x[support[n]].abs() >= threshold).all())
        rest = torch.ones(x.numel(), dtype=torch.bool)
        rest[support[n]] = False
        assert bool((got[rest] == 0).all()) and bool((x[rest].abs() <= threshold).all())
        step = float(x[support[n]].abs().max()) / 127 * (1 + 2**-7) if "int8" in name and support[n].numel() else 0.0
        error = (got[support[n]] - x[support[n]]).abs()
        assert not error.numel() or float(error.max()) <= step * (1 + 1e-5)


@settings(max_examples=120, deadline=None)
@given(n=st.integers(1, 20000), seed=st.integers(0, 2**31), fraction=st.sampled_from([0.0, 0.0005, 0.01, 0.3, 1.0]))
def test_rice_coding_round_trips_any_index_set_in_about_log2_of_the_mean_gap_bits(n: int, seed: int, fraction: float) -> None:
    g = torch.Generator().manual_seed(seed)
    k = min(n, math.ceil(fraction * n))
    indices = torch.randperm(n, generator=g)[:k].sort().values
    coded = packing.rice_encode(indices, n)
    assert torch.equal(packing.rice_decode(coded, k, n), indices)
    size = sum(t.numel() for t in coded.values())
    assert size <= packing.rice_max_bytes(k, n)
    if k >= 64:  # Rice is within ~1.5 bits of the entropy of uniform gaps: log2(mean gap) + 1.5 bits an index, give or take
        assert size * 8 / k <= math.log2(max(n / k, 1)) + 3.5


@settings(max_examples=300, deadline=None)
@given(b=st.integers(0, 45), low=st.binary(max_size=40), high=st.binary(max_size=40), k=st.integers(0, 30), n=st.integers(1, 5000))
def test_any_bytes_rice_decode_to_valid_indices_or_a_wire_error(b: int, low: bytes, high: bytes, k: int, n: int) -> None:
    coded = {INDEX_B: torch.tensor([b], dtype=torch.uint8), INDEX_LOW: torch.frombuffer(bytearray(low) or bytearray(1), dtype=torch.uint8)[: len(low)],
             INDEX_HIGH: torch.frombuffer(bytearray(high) or bytearray(1), dtype=torch.uint8)[: len(high)]}
    try:
        indices = packing.rice_decode(coded, k, n)
    except WireFormatError:
        return
    assert indices.numel() == k and bool((torch.diff(indices) > 0).all()) and (k == 0 or 0 <= int(indices[0]) and int(indices[-1]) < n)


def test_one_percent_of_a_large_tensor_moves_over_fifty_times_fewer_bytes_and_int8_over_a_hundred() -> None:
    update = {"w": torch.randn(512, 2048), "b": torch.randn(2048)}
    raw = len(codecs.get("raw").encode(UpdateSource.of(update)))
    assert raw / len(codecs.get("topk:0.01").encode(UpdateSource.of(update))) >= 50
    assert raw / len(codecs.get("topk+int8:0.01").encode(UpdateSource.of(update))) >= 100


def _parts(name: str, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in tensorcodec.decode(bytearray(codecs.get(name).encode(UpdateSource.of(update)))).tensors.items()}


def _blob(parts: dict[str, torch.Tensor]) -> bytes:
    return bytes(tensorcodec.encode(parts))


def _rice(indices: list[int], n: int = 1152 + 3000 + 10) -> dict[str, torch.Tensor]:
    return packing.rice_encode(torch.tensor(indices, dtype=torch.int64), n)


def _unary(bits: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.packbits(np.array(bits, dtype=np.uint8), bitorder="little"))


def _indices(parts: dict[str, torch.Tensor]) -> list[int]:
    return packing.rice_decode(parts, parts[VALUES].numel(), 10**9).tolist()


@pytest.mark.parametrize("name, breakage, words", [
    ("topk:0.05", lambda p: p.update(_rice([*_indices(p)[:-1], 4162])), "out of range"),
    ("topk:0.05", lambda p: p.update(_rice(sorted([*_indices(p)[:-1], _indices(p)[0]]))), "repeats"),
    ("topk:0.05", lambda p: p.update(_rice(_indices(p)[:-1])), "low bits|unary stream holds"),  # one index short
    ("topk:0.05", lambda p: p.update({INDEX_B: torch.tensor([41], dtype=torch.uint8)}), "Rice parameter"),
    ("topk:0.05", lambda p: p.update({INDEX_B: torch.tensor([40], dtype=torch.uint8), INDEX_LOW: torch.zeros(5 * 209, dtype=torch.uint8),
                                      INDEX_HIGH: _unary([1] * 32 + [0] * 209 + [1] * 7)}),
     "gap beyond"),  # a unary run of 32 with 40 low bits: a gap of 2^45, which int64 arithmetic could wrap past the check
    ("topk:0.05", lambda p: p.update({INDEX_LOW: p[INDEX_LOW][:-1].clone()}), "low bits"),
    ("topk:0.05", lambda p: p.update({INDEX_HIGH: torch.cat([p[INDEX_HIGH], torch.tensor([255], dtype=torch.uint8)])}), "unary stream"),
    ("topk:0.05", lambda p: p[INDEX_HIGH].__setitem__(-1, p[INDEX_HIGH][-1] & 0x7F), "unary stream"),  # a zero in the padding
    ("topk:0.05", lambda p: p.update({INDEX_HIGH: p[INDEX_HIGH].to(torch.int16)}), "uint8"),
    ("topk:0.05", lambda p: p.update({VALUES: p[VALUES][:-1].clone()}), "values"),
    ("topk:0.05", lambda p: p.update({VALUES: p[VALUES].double()}), "values"),
    ("topk:0.05", lambda p: p.pop(INDEX_LOW), "missing"),
    ("topk:0.05", lambda p: p.update({SCALES: torch.ones(3, dtype=torch.bfloat16)}), "unexpected"),
    ("topk:0.05", lambda p: p.update({EXACT: torch.zeros(3)}), "buffers"),
    ("topk+int8:0.05", lambda p: p[SCALES].__setitem__(1, math.nan), "non-finite scale"),
    ("topk+int8:0.05", lambda p: p.update({SCALES: p[SCALES][:2].clone()}), "scales"),
    ("topk+int8:0.05", lambda p: p.update({VALUES: torch.full_like(p[VALUES], -128)}), "-128"),
    ("topk+int8:0.05", lambda p: p.update({VALUES: p[VALUES].float()}), "values"),
])
def test_a_malformed_topk_update_is_refused_precisely(name: str, breakage, words: str) -> None:  # type: ignore[no-untyped-def]
    update = _update()
    parts = _parts(name, update)
    breakage(parts)
    with pytest.raises(WireFormatError, match=words):
        codecs.get(name).decode(_blob(parts), _specs(update))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["topk:0.2", "topk+int8:0.2"]), data=st.data())
def test_fuzzed_topk_blobs_decode_to_the_specs_or_fail_as_wire_errors(name: str, data: st.DataObject) -> None:
    g = torch.Generator().manual_seed(0)  # the same blob length every example (hypothesis replays draws)
    update = {"w": torch.randn(4, 60, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(3)}
    blob = bytearray(codecs.get(name).encode(UpdateSource.of(update)))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        dense, support = codecs.get(name).decode_update(bytes(blob), _specs(update))
    except WireFormatError:
        return
    assert _specs(dense) == _specs(update)
    for n, idx in support.items():  # whatever passes has distinct in-range indices and zeros elsewhere
        assert bool((torch.diff(idx) > 0).all()) and int(idx.max()) < dense[n].numel()
        rest = torch.ones(dense[n].numel(), dtype=torch.bool)
        rest[idx] = False
        assert bool((dense[n].reshape(-1)[rest] == 0).all())


def test_sparse_folds_equal_the_dense_weighted_mean() -> None:
    codec = codecs.get("topk:0.1")
    decoded = [codec.decode_update(codec.encode(UpdateSource.of(_update(s))), _specs(_update(0))) for s in range(4)]
    weights = [3.0, 1.0, 7.0, 2.0]
    acc = Accumulator(_update(0))
    for (dense, support), w in zip(decoded, weights):
        acc.add(dense, w, support)
    reference = weighted_mean([(dense, w) for (dense, _), w in zip(decoded, weights)])
    for name, value in acc.mean().items():
        assert torch.allclose(value, reference[name].double(), atol=1e-12), name


def test_error_feedback_sends_every_change_eventually_and_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Sum of what the server decoded over rounds + the residual == sum of the true updates (nothing is lost)."""
    codec = codecs.get("topk:0.05")
    specs = _specs(_update())
    feedback = ErrorFeedback(tmp_path)
    true_total = {n: torch.zeros(s) for n, (d, s) in specs.items() if d.is_floating_point}
    sent_total = {n: torch.zeros(s) for n in true_total for s in [specs[n][1]]}
    for round_number in range(6):
        if round_number == 3:
            feedback = ErrorFeedback(tmp_path)  # the client restarted: the residual comes back from the work dir
        update = _update(round_number)
        blob = feedback.encode(codec, UpdateSource.of(update), "run-1")
        decoded = codec.decode(bytes(blob), specs)
        feedback.accepted()
        for n in true_total:
            true_total[n] += update[n]
            sent_total[n] += decoded[n]
    residual = checkpoint_residual(tmp_path)
    for n in true_total:
        assert torch.allclose(sent_total[n] + residual[n], true_total[n], atol=1e-4), n
    assert feedback.norm() > 0


def test_the_residual_resets_for_another_run_and_a_refused_update_leaves_it_unchanged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    codec = codecs.get("topk:0.05")
    feedback = ErrorFeedback(tmp_path)
    feedback.encode(codec, UpdateSource.of(_update(1)), "run-1")
    feedback.accepted()
    before = checkpoint_residual(tmp_path)
    feedback.encode(codec, UpdateSource.of(_update(2)), "run-1")  # refused: accepted() is never called
    assert all(torch.equal(before[n], t) for n, t in checkpoint_residual(tmp_path).items())
    update = _update(3)
    restarted = ErrorFeedback(tmp_path)
    blob = restarted.encode(codec, UpdateSource.of(update), "run-2")  # a new run: starts from zero
    assert torch.equal(codec.decode(bytes(blob), _specs(update))["fc.weight"],
                       codec.decode(bytes(codec.encode(UpdateSource.of(update))), _specs(update))["fc.weight"])


def checkpoint_residual(folder) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from fedtl.common import checkpoint

    return dict(checkpoint.load_tensors(folder / "error_feedback.safetensors").tensors)


def test_topk_under_secure_aggregation_is_refused_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedtl.server.config import parse_args

    base = ["--run-dir", str(tmp_path), "--data", "synthetic:60"]
    assert parse_args([*base, "--upload-codec", "topk:0.010"], env={}).upload_codec == "topk:0.01"
    with pytest.raises(ConfigError, match="indices would show"):
        parse_args([*base, "--upload-codec", "topk:0.01", "--secure-aggregation", "--max-update-norm", "1", "--min-clients", "3"], env={})
    with pytest.raises(SystemExit):
        parse_args([*base, "--upload-codec", "topk:2"], env={})


def test_a_federation_uploading_topk_with_error_feedback_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inprocess_federation import InProcessFederation as Federation

    fed = Federation(tmp_path, ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:400", "--rounds", "3",
                                "--min-clients", "2", "--join-grace", "0", "--batch-size", "32", "--upload-codec", "topk+int8:0.05"])
    try:
        fed.start_server()
        for name in ("a", "b"):
            fed.start_client(name, ["--data", "synthetic:400"])
        assert fed.server.wait(120) == 0, fed.server.log[-3000:]
    finally:
        fed.close()
    records = [r for r in fed.rounds() if r["round"] > 0]
    assert [r["upload_codec"] for r in records] == ["topk+int8:0.05"] * 3 and all(r["answered"] == 2 for r in records)
    assert all(math.isfinite(r["test_loss"]) for r in records)
    assert records[-1]["bytes_up"] < records[-1]["bytes_down"] / 4
    residuals = sorted(tmp_path.rglob("error_feedback.safetensors"))
    assert len(residuals) == 2  # each client kept what it did not send


@pytest.mark.parametrize("name", ["fp16", "int8", "topk:0.05", "topk+int8:0.05", "topk:1"])
def test_buffers_are_never_rounded_so_a_variance_could_go_below_zero(name: str) -> None:
    """A running variance of 1e-4 whose delta is -0.99e-4, next to a delta of 5: int8 rounding at a step of 5/127 could
    take it below zero. Buffers (UpdateSource.exact) go as they are (fp16's cast) or as float16 rounded toward zero
    (the packed codecs): never a larger change, never the other sign, so the variance stays positive."""
    base_var = torch.tensor([1e-4, 10.0, 3e-3, 7.0] * 8)
    change = torch.tensor([-0.99e-4, 5.0, -2.9999e-3, -6.9999] * 8)
    update = {"w": torch.randn(16, 40), "bn.running_var": change}
    codec = codecs.get(name)
    blob = codec.encode(UpdateSource.of(update, frozenset({"bn.running_var"})))
    low, high = codec.size_bounds(_specs(update))
    assert low <= len(blob) <= high
    dense, support = codec.decode_update(bytes(blob), _specs(update))
    got = dense["bn.running_var"]
    assert "bn.running_var" not in support and bool((got.abs() <= change.abs()).all()) and bool((got * change > 0).all())
    assert float(((got - change).abs() / change.abs()).max()) <= 2**-10
    assert bool((base_var + got > 0).all())
    huge = {"w": torch.randn(4, 40), "bn.running_var": torch.tensor([1e6, -3.0])}  # beyond float16: float32 as it is
    decoded = codec.decode(bytes(codec.encode(UpdateSource.of(huge, frozenset({"bn.running_var"})))), _specs(huge))
    assert torch.equal(decoded["bn.running_var"], huge["bn.running_var"])
