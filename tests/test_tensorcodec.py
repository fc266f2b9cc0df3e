"""The tensor wire format: pinned bytes, exact round trips, safetensors interop, and every malformed input refused."""

from __future__ import annotations

import json
import struct

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from fedtl.common import tensorcodec
from fedtl.common.errors import CorruptError, OversizeError, TruncatedError, WireFormatError

ROUNDTRIP_DTYPES = [d for d in tensorcodec.DTYPE_TO_CODE if d not in (torch.float8_e4m3fn, torch.float8_e5m2)]


def test_golden_bytes_of_a_tiny_tensor() -> None:
    blob = tensorcodec.encode({"w": torch.tensor([1.0, -2.0], dtype=torch.float32)})
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    header += b" " * (-(8 + len(header)) % 8)
    assert bytes(blob) == struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, -2.0)
    assert tensorcodec.sha256_hex(blob) == tensorcodec.sha256_hex(bytes(blob))


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(dtype)


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
named = st.dictionaries(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=12).filter(lambda n: n != "__metadata__"),
    st.tuples(st.sampled_from(ROUNDTRIP_DTYPES), shapes, st.integers(0, 2**16)),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(named)
def test_round_trip_is_bit_exact_for_every_dtype_and_shape(spec) -> None:  # type: ignore[no-untyped-def]
    tensors = {name: _tensor(dtype, shape, seed) for name, (dtype, shape, seed) in spec.items()}
    decoded = tensorcodec.decode(tensorcodec.encode(tensors)).tensors
    assert decoded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert decoded[name].dtype == t.dtype and decoded[name].shape == t.shape
        assert torch.equal(decoded[name].view(-1).view(torch.uint8) if t.numel() else decoded[name], t.view(-1).view(torch.uint8) if t.numel() else t)


def test_float8_and_special_values_survive() -> None:
    t = {"f8": torch.tensor([0.5, -1.0], dtype=torch.float8_e4m3fn), "nan": torch.tensor([float("nan"), float("inf")])}
    out = tensorcodec.decode(tensorcodec.encode(t)).tensors
    assert torch.equal(out["f8"].view(torch.uint8), t["f8"].view(torch.uint8))
    assert torch.equal(out["nan"].view(torch.int32), t["nan"].view(torch.int32))
    assert tensorcodec.non_finite(out) == ["nan"]


def test_scalars_empty_tensors_and_metadata() -> None:
    t = {"scalar": torch.tensor(7, dtype=torch.int64), "empty": torch.empty(0, 3), "noncontig": torch.arange(12.0).view(3, 4).t()}
    d = tensorcodec.decode(tensorcodec.encode(t, {"round": "3"}))
    assert d.metadata == {"round": "3"}
    assert d.tensors["scalar"].shape == () and int(d.tensors["scalar"]) == 7
    assert d.tensors["empty"].shape == (0, 3)
    assert torch.equal(d.tensors["noncontig"], t["noncontig"])


def test_decoded_tensors_are_views_of_the_blob_not_copies() -> None:
    blob = tensorcodec.encode({"w": torch.zeros(4)})
    w = tensorcodec.decode(blob).tensors["w"]
    w[0] = 5.0
    assert tensorcodec.decode(blob).tensors["w"][0] == 5.0


def test_every_tensor_is_aligned_to_its_element_size() -> None:
    t = {"a": torch.zeros(3, dtype=torch.uint8), "b": torch.zeros(3, dtype=torch.float64), "c": torch.zeros(1, dtype=torch.int16)}
    blob = tensorcodec.encode(t)
    specs, _, start = tensorcodec.read_header(blob)
    assert start % 8 == 0
    for spec in specs:
        assert spec.offset % torch.empty((), dtype=spec.dtype).element_size() == 0


def test_encoding_is_deterministic() -> None:
    t = {"x": torch.randn(5), "y": torch.arange(3)}
    assert tensorcodec.encode(t) == tensorcodec.encode(dict(t))


def test_interoperates_with_the_safetensors_library_both_ways() -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    t = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(3), "mask": torch.tensor([True, False])}
    theirs = safetensors_torch.load(bytes(tensorcodec.encode(t, {"k": "v"})))
    assert all(torch.equal(theirs[k], t[k]) for k in t)
    ours = tensorcodec.decode(safetensors_torch.save(t)).tensors  # their header order and layout
    assert all(torch.equal(ours[k], t[k]) for k in t)


def test_header_order_does_not_matter() -> None:
    payload = struct.pack("<2f", 1.0, 2.0) + struct.pack("<q", 9)
    for order in (["a", "b"], ["b", "a"]):
        entries = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]}}
        header = json.dumps({k: entries[k] for k in order}).encode()
        out = tensorcodec.decode(struct.pack("<Q", len(header)) + header + payload).tensors
        assert out["a"].tolist() == [1.0, 2.0] and int(out["b"]) == 9


def _blob(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize(
    "blob, error",
    [
        (b"\x01\x02", TruncatedError),
        (struct.pack("<Q", 1 << 40) + b"{}", OversizeError),
        (struct.pack("<Q", 100) + b"{}", TruncatedError),
        (_blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), TruncatedError),
        (_blob({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), CorruptError),
        (_blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), CorruptError),  # hole
        (_blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), CorruptError),
        (_blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), CorruptError),  # trailing bytes
        (_blob({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), CorruptError),
        (_blob({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), CorruptError),
        (_blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, b"\0" * 4), CorruptError),
        (_blob({"a": {"dtype": "F64", "shape": [1], "data_offsets": [4, 12]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12), CorruptError),
        (_blob({"__metadata__": {"k": 1}}, b""), CorruptError),
        (_blob([1, 2], b""), CorruptError),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", CorruptError),
        (struct.pack("<Q", 41) + b'{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"a":1}' [:41], CorruptError),
    ],
)
def test_malformed_blobs_get_named_errors(blob: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        tensorcodec.decode(blob)


def test_duplicate_names_are_refused() -> None:
    raw = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    with pytest.raises(CorruptError, match="twice"):
        tensorcodec.decode(struct.pack("<Q", len(raw)) + raw + b"\0")


def test_huge_declared_shapes_fail_before_any_allocation() -> None:
    blob = _blob({"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(CorruptError):
        tensorcodec.decode(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_raise_only_wire_format_errors(data: bytes) -> None:
    try:
        tensorcodec.decode(data)
    except WireFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_blobs_raise_only_wire_format_errors(data) -> None:  # type: ignore[no-untyped-def]
    blob = bytearray(tensorcodec.encode({"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor(1)}))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        tensorcodec.decode(bytes(blob[:cut]))
    except WireFormatError:
        pass
