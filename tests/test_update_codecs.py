"""Lossy upload codecs (fp16, bf16, int8): round trips, unbiased rounding, sizes, and every malformed blob refused
with a WireFormatError before it can reach the aggregate. Plus a real federation that uploads int8.
int8 travels in the packed layout (common/codecs/packing.py): sections, not one entry a tensor."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.common import codecs, tensorcodec
from fedtl.common.codecs import UpdateSource
from fedtl.common.codecs.int8 import CODES, SCALES, scale_groups
from fedtl.common.codecs.packing import EXACT, EXACT_MASK, OTHER
from fedtl.common.errors import ConfigError, WireFormatError

LOSSY = ("fp16", "bf16", "int8")


def _update(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(8, 3, 3, 3, generator=g) * scale, "fc.weight": torch.randn(10, 64, generator=g) * scale,
            "fc.bias": torch.randn(10, generator=g) * scale, "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
            "empty": torch.zeros(0, 4)}


def _specs(update: dict[str, torch.Tensor]) -> dict:
    return {n: (t.dtype, tuple(t.shape)) for n, t in update.items()}


def _roundtrip(name: str, update: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    codec = codecs.get(name)
    blob = codec.encode(UpdateSource.of(update))
    low, high = codec.size_bounds(_specs(update))
    assert low <= len(blob) <= high
    return codec.decode(bytes(blob), _specs(update)), len(blob)


@pytest.mark.parametrize("name", LOSSY)
def test_a_round_trip_keeps_names_dtypes_shapes_and_integer_buffers_exactly(name: str) -> None:
    update = _update()
    got, _ = _roundtrip(name, update)
    assert _specs(got) == _specs(update)
    assert int(got["bn.num_batches_tracked"]) == 7
    tolerance = {"fp16": 1e-3, "bf16": 8e-3, "int8": (1 + 2**-7) / 127}[name]  # int8: a bfloat16 scale rounded up
    for n in ("conv.weight", "fc.weight", "fc.bias"):
        rows = update[n].reshape(scale_groups(tuple(update[n].shape)), -1) if name == "int8" else \
            update[n].reshape(update[n].shape[0], -1) if update[n].dim() >= 2 else update[n].reshape(1, -1)
        bound = rows.abs().amax(dim=1, keepdim=True) * tolerance + 1e-12
        err = (got[n] - update[n]).reshape(rows.shape).abs()
        assert bool((err <= bound * (1 if name == "int8" else 2)).all()), n


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 70), seed=st.integers(0, 2**31), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e30]))
def test_int8_error_is_below_one_step_of_each_scale_group(rows: int, cols: int, seed: int, magnitude: float) -> None:
    """A row (output channel) of 32 entries or more has its own scale; shorter rows share the tensor's."""
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * magnitude
    got, _ = _roundtrip("int8", {"w": x})
    groups = x.reshape(scale_groups((rows, cols)), -1)
    step = (groups.abs().amax(dim=1, keepdim=True) / 127 * (1 + 2**-7)).expand(groups.shape).reshape(x.shape)
    assert bool(((got["w"] - x).abs() <= step * (1 + 1e-5)).all()) and bool(torch.isfinite(got["w"]).all())


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3), min_size=1, max_size=5),
       name=st.sampled_from(["int8", "topk:0.3", "topk+int8:0.3"]), seed=st.integers(0, 2**31))
def test_any_shapes_empty_ones_included_round_trip_in_the_packed_codecs(shapes: list[list[int]], name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    update = {f"t{i}": torch.randn(shape, generator=g) for i, shape in enumerate(shapes)} | {"n": torch.tensor([3, 4])}
    got, _ = _roundtrip(name, update)
    assert _specs(got) == _specs(update) and torch.equal(got["n"], update["n"])
    for n, t in update.items():
        if t.is_floating_point() and t.numel():
            assert float((got[n] - t).abs().max()) <= float(t.abs().max()) * (1 + 2**-7) + 1e-6


def test_int8_rounding_is_unbiased() -> None:
    x = torch.linspace(-1, 1, 257).reshape(1, -1)
    draws = 3000
    mean = sum(_roundtrip("int8", {"w": x})[0]["w"] for _ in range(draws)) / draws
    step = 1 / 127
    # each draw's error is in (-step, step) with variance <= step^2 / 4: the mean's error is within 5 sigma
    assert float((mean - x).abs().max()) < 5 * step / (2 * math.sqrt(draws))


def test_int8_moves_about_a_quarter_of_raw_and_fp16_half() -> None:
    update = {"w": torch.randn(256, 512), "b": torch.randn(256)}
    raw = len(codecs.get("raw").encode(UpdateSource.of(update)))
    sizes = {name: _roundtrip(name, update)[1] for name in LOSSY}
    assert raw / sizes["int8"] >= 3.9 and raw / sizes["fp16"] >= 1.95 and raw / sizes["bf16"] >= 1.95


def _blob(tensors: dict[str, torch.Tensor]) -> bytes:
    return bytes(tensorcodec.encode(tensors))


def _int8_parts(update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in tensorcodec.decode(bytes(codecs.get("int8").encode(UpdateSource.of(update)))).tensors.items()}


def _set(parts: dict[str, torch.Tensor], name: str, at: int, value: float) -> None:
    parts[name][at] = value


@pytest.mark.parametrize("breakage, words", [
    (lambda p: _set(p, CODES, 5, -128), "-128"),
    (lambda p: _set(p, SCALES, 3, math.nan), "non-finite scale"),
    (lambda p: _set(p, SCALES, 0, -1.0), "negative"),
    (lambda p: p.update({SCALES: p[SCALES][:-1].clone()}), "scales"),
    (lambda p: p.update({SCALES: p[SCALES].float()}), "scales"),  # float32 scales: the codec sends bfloat16
    (lambda p: p.update({CODES: p[CODES].float()}), "int8"),
    (lambda p: p.update({CODES: p[CODES][:-1].clone()}), "int8"),
    (lambda p: p.update({OTHER: p[OTHER][:-1].clone()}), "integer tensors"),
    (lambda p: p.update({EXACT_MASK: torch.tensor([0, 0], dtype=torch.uint8)}), "mask"),
    (lambda p: p.update({EXACT_MASK: torch.tensor([16], dtype=torch.uint8)}), "past the last"),
    (lambda p: p.update({EXACT: torch.zeros(1, dtype=torch.float64)}), "buffers"),
    (lambda p: p.pop(SCALES), "missing \\['scales'\\]"),
    (lambda p: p.update({"extra": torch.zeros(1)}), "unexpected"),
])
def test_a_malformed_int8_update_is_refused_precisely(breakage, words: str) -> None:  # type: ignore[no-untyped-def]
    update = _update()
    parts = _int8_parts(update)
    breakage(parts)
    with pytest.raises(WireFormatError, match=words):
        codecs.get("int8").decode(_blob(parts), _specs(update))


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_a_cast_update_in_the_wrong_dtype_or_shape_is_refused(name: str) -> None:
    update = _update()
    wrong = {n: (t.double() if t.is_floating_point() else t.clone()) for n, t in update.items()}  # neither 16 bits nor as it is
    with pytest.raises(WireFormatError, match="the codec sends"):
        codecs.get(name).decode(_blob(wrong), _specs(update))
    as_is = codecs.get(name).decode(_blob({n: t.clone() for n, t in update.items()}), _specs(update))  # every tensor sent exactly
    assert all(torch.equal(as_is[n], update[n]) for n in update)
    with pytest.raises(WireFormatError, match="unexpected"):
        codecs.get(name).decode(_blob({**wrong, "x": torch.zeros(1)}), _specs(update))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(LOSSY), data=st.data())
def test_fuzzed_blobs_decode_to_the_specs_or_fail_as_wire_errors(name: str, data: st.DataObject) -> None:
    update = {"w": torch.randn(4, 6), "b": torch.randn(4), "n": torch.tensor(3)}
    blob = bytearray(codecs.get(name).encode(UpdateSource.of(update)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        got = codecs.get(name).decode(bytes(blob), _specs(update))
    except WireFormatError:
        return
    assert _specs(got) == _specs(update)  # whatever passes is shaped as the model; finiteness is validation's job


def test_a_tensor_the_sender_marks_as_a_buffer_travels_as_float16_and_decodes_in_place() -> None:
    """The mask says which float tensors went as buffers; decoding follows it (a parameter marked so only travels
    more precisely), and every tensor lands under its own name however the sections are ordered."""
    update = _update()
    codec = codecs.get("int8")
    got = codec.decode(bytes(codec.encode(UpdateSource.of(update, frozenset({"fc.bias"})))), _specs(update))
    assert float((got["fc.bias"] - update["fc.bias"]).abs().max()) <= float(update["fc.bias"].abs().max()) * 2**-10
    assert list(got) == list(update)


def test_an_unknown_codec_or_one_under_secure_aggregation_is_refused_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedtl.server.config import parse_args

    base = ["--run-dir", str(tmp_path), "--data", "synthetic:60"]
    assert parse_args([*base, "--upload-codec", "int8"], env={}).upload_codec == "int8"
    with pytest.raises(SystemExit):
        parse_args([*base, "--upload-codec", "zip"], env={})
    secure = [*base, "--secure-aggregation", "--max-update-norm", "1", "--min-clients", "3"]
    # int8 under secure aggregation: 8-bit fixed-point values are what gets masked
    assert parse_args([*secure, "--upload-codec", "int8"], env={}).strategy.secure.bits == 8
    assert parse_args(secure, env={}).strategy.secure.bits == 24
    with pytest.raises(ConfigError, match="drop --secagg-bits 16"):
        parse_args([*secure, "--upload-codec", "int8", "--secagg-bits", "16"], env={})
    with pytest.raises(ConfigError, match="--secure-aggregation"):
        parse_args([*secure, "--upload-codec", "fp16"], env={})


def test_a_federation_uploading_int8_moves_far_fewer_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inprocess_federation import InProcessFederation as Federation

    sent = {}
    for codec in ("raw", "int8"):
        (tmp_path / codec).mkdir()
        fed = Federation(tmp_path / codec, ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:400", "--rounds", "2",
                                            "--min-clients", "2", "--join-grace", "0", "--batch-size", "32", "--upload-codec", codec])
        try:
            fed.start_server()
            for name in ("a", "b"):
                fed.start_client(name, ["--data", "synthetic:400"])
            assert fed.server.wait(120) == 0, fed.server.log[-3000:]
        finally:
            fed.close()
        records = [r for r in fed.rounds() if r["round"] > 0]
        assert [r["upload_codec"] for r in records] == [codec, codec] and all(r["answered"] == 2 for r in records)
        assert all(math.isfinite(r["test_loss"]) for r in records)
        sent[codec] = sum(r["bytes_up"] for r in records)
    # tiny_cnn's update is 23 KB: the JSON header (names, offsets; twice the entries with the scales) is a third of an int8
    # blob here; on a real model the ratio approaches 4 (test_int8_moves_about_a_quarter_of_raw_and_fp16_half)
    assert sent["raw"] / sent["int8"] >= 2.5, sent
