"""The update codec seam: the raw codec is today's format exactly, encodes from a lazy source into a reused
buffer, states the sizes it can produce, and refuses malformed bytes with named errors."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from fedtl.common import codecs, tensorcodec
from fedtl.common.codecs import UpdateSource
from fedtl.common.errors import ConfigError, WireFormatError

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]
RAW = codecs.get("raw")


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


updates = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True),
                          st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3).map(tuple), st.integers(0, 999)),
                          min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(updates)
def test_raw_round_trip_is_exact_and_within_its_stated_bounds(spec) -> None:  # type: ignore[no-untyped-def]
    tensors = {name: _tensor(dtype, shape, seed) for name, (dtype, shape, seed) in spec.items()}
    source = UpdateSource.of(tensors)
    blob = RAW.encode(source)
    assert bytes(blob) == bytes(tensorcodec.encode(tensors)), "raw is the tensorcodec format, byte for byte"
    least, most = RAW.size_bounds(source.specs)
    assert least <= len(blob) <= most
    back = RAW.decode(blob, source.specs)
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


def test_encoding_writes_into_a_reused_buffer_and_computes_each_tensor_once() -> None:
    calls: list[str] = []
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([7], dtype=torch.int64)}

    def write(name: str, out: torch.Tensor) -> None:
        calls.append(name)
        out.copy_(state[name] * 2)

    source = UpdateSource({n: (t.dtype, tuple(t.shape)) for n, t in state.items()}, write)
    buffer = bytearray(4096)
    blob = RAW.encode(source, buffer)
    assert isinstance(blob, memoryview) and blob.obj is buffer, "no new allocation when the buffer is big enough"
    assert sorted(calls) == ["a", "b"]
    back = RAW.decode(bytes(blob), source.specs)
    assert torch.equal(back["a"], state["a"] * 2) and int(back["b"]) == 14


@pytest.mark.parametrize("damage", [lambda b: b[:-3], lambda b: b[:5], lambda b: b"\xff" * 8 + b[8:], lambda b: b[:8] + b"[" + b[9:]])
def test_malformed_raw_updates_raise_wire_format_errors(damage) -> None:  # type: ignore[no-untyped-def]
    blob = bytes(RAW.encode(UpdateSource.of({"w": torch.ones(3, 3)})))
    with pytest.raises(WireFormatError):
        RAW.decode(damage(blob), {"w": (torch.float32, (3, 3))})


def test_an_unknown_encoding_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="raw"):
        codecs.get("zstd")
