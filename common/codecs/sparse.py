"""Top-k sparsification: `topk:F` sends the fraction F of each float tensor's entries largest in magnitude,
`topk+int8:F` the same entries as int8 codes with one scale a tensor.

Indices travel gap-coded: sorted ascending, each stored as its distance from the previous one (the first
from 0), in the narrowest unsigned type that holds the tensor's largest gap (u8, u16 or i32). At F = 0.01
gaps average 100, so most tensors need two bytes an index instead of eight for torch's int64 indices.

Top-k is biased (small entries never travel), so clients keep what they did not send and add it to the
next round's update (error feedback, client/error_feedback.py; Stich et al. 2018, Lin et al. 2018).
Decoding rebuilds dense tensors (validation, robust rules and clipping see ordinary tensors) and reports
each tensor's support, so the weighted mean folds only the k entries sent (O(k), common to every rule
that streams). Every count, gap and scale is checked before use: an index out of range, a repeated
index, a wrong value count or a NaN scale is a wire-format error naming the tensor.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch

from fedtl.common import tensorcodec
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.lossy import QMAX, SCALE, dequantise, quantise
from fedtl.common.codecs.raw import HEADER_ALLOWANCE
from fedtl.common.errors import CorruptError

INDEX = ".__idx"  # suffix of a tensor's gap-coded indices
_GAP_TYPES = ((255, torch.uint8), (65535, torch.uint16), ((1 << 31) - 1, torch.int32))
_WIDTH = {torch.uint8: 1, torch.uint16: 2, torch.int32: 4}


class TopKCodec(UpdateCodec):
    error_feedback = True

    def __init__(self, fraction: float, int8: bool = False) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
        self.fraction, self.int8 = fraction, int8
        self.name = f"topk{'+int8' if int8 else ''}:{fraction:g}"

    def k(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        low = high = 0
        for dtype, shape in specs.values():
            n = math.prod(shape)
            if not dtype.is_floating_point:
                low, high = low + n * _element(dtype), high + n * _element(dtype)
                continue
            k, value = self.k(n), (1 if self.int8 else 4)
            scale = 4 if self.int8 else 0
            low, high = low + k * (value + 1) + scale, high + max(k * (value + 4) + scale, n * _element(dtype))  # or sent as it is
        return low, high + 3 * HEADER_ALLOWANCE  # up to three entries a tensor: values, indices, scale

    def encode(self, source: UpdateSource, out: bytearray | None = None) -> bytearray | memoryview:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
        parts: dict[str, torch.Tensor] = {}
        for name, (dtype, shape) in source.specs.items():
            if name.endswith((SCALE, INDEX)):
                raise CorruptError(f"{self.name} cannot carry a tensor named {name!r}: its suffix is the codec's")
            full = torch.empty(shape, dtype=dtype)
            source.write(name, full)
            if not dtype.is_floating_point or name in source.exact:
                parts[name] = full
                continue
            flat = full.reshape(-1).float()
            chosen = torch.topk(flat.abs(), self.k(flat.numel()), sorted=False).indices.sort().values
            values = flat[chosen]
            if self.int8:
                parts[name], parts[name + SCALE] = quantise(values, generator)
            else:
                parts[name] = values
            parts[name + INDEX] = gaps(chosen)
        return tensorcodec.build(tensorcodec.plan(parts), lambda spec, dst: dst.copy_(parts[spec.name]), out)

    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        return self.decode_update(blob, specs)[0]

    def decode_update(self, blob, specs: Specs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        stored = tensorcodec.decode(blob).tensors
        # a float tensor without indices came as it is (a buffer: UpdateSource.exact)
        exact = {n for n, (d, _) in specs.items() if d.is_floating_point and n in stored and n + INDEX not in stored}
        expected = set()
        for name, (dtype, _) in specs.items():
            expected.add(name)
            if dtype.is_floating_point and name not in exact:
                expected |= {name + INDEX} | ({name + SCALE} if self.int8 else set())
        if set(stored) != expected:
            missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
            raise CorruptError(f"{self.name} update: tensors differ from what the codec sends: missing {missing[:5]}, unexpected {extra[:5]}")
        dense: dict[str, torch.Tensor] = {}
        support: dict[str, torch.Tensor] = {}
        for name, (dtype, shape) in specs.items():
            values = stored[name]
            if not dtype.is_floating_point or name in exact:
                if values.dtype != dtype or tuple(values.shape) != tuple(shape):
                    raise CorruptError(f"{self.name} update: tensor {name} is {values.dtype} {tuple(values.shape)}, expected {dtype} {tuple(shape)}")
                dense[name] = values
                continue
            n = math.prod(shape)
            k = self.k(n)
            want = torch.int8 if self.int8 else torch.float32
            if values.dtype != want or tuple(values.shape) != (k,):
                raise CorruptError(f"{self.name} update: tensor {name} sends {values.numel()} {values.dtype} values, "
                                   f"the codec sends {k} {want}")
            indices = ungap(stored[name + INDEX], k, n, name, self.name)
            if self.int8:
                values = _dequantised(values, stored[name + SCALE], name, self.name)
            out = torch.zeros(n, dtype=dtype)
            out[indices] = values.to(dtype)
            dense[name], support[name] = out.reshape(shape), indices
        return dense, support


def gaps(indices: torch.Tensor) -> torch.Tensor:
    """Sorted distinct indices as gaps in the narrowest type that holds the largest."""
    diffs = torch.diff(indices, prepend=indices.new_zeros(1))
    largest = int(diffs.max()) if diffs.numel() else 0
    dtype = next(t for limit, t in _GAP_TYPES if largest <= limit)
    return diffs.to(dtype)


def ungap(coded: torch.Tensor, k: int, n: int, name: str, codec: str) -> torch.Tensor:
    """int64 indices from gaps; strictly increasing (no repeats) and below n, or a CorruptError."""
    if coded.dtype not in _WIDTH or tuple(coded.shape) != (k,):
        raise CorruptError(f"{codec} update: {name} has {coded.numel()} {coded.dtype} indices, the codec sends {k} u8, u16 or i32")
    steps = torch.from_numpy(coded.numpy().astype(np.int64))  # numpy widens u16, which torch cannot yet
    if k and int(steps[0]) < 0:
        raise CorruptError(f"{codec} update: {name} has a negative index")
    if k > 1 and int(steps[1:].min()) < 1:
        raise CorruptError(f"{codec} update: {name} repeats an index or goes back (indices must be strictly increasing)")
    indices = torch.cumsum(steps, 0)
    if k and int(indices[-1]) >= n:
        raise CorruptError(f"{codec} update: {name} has index {int(indices[-1])}, out of range for its {n} entries")
    return indices


def _dequantised(codes: torch.Tensor, scale: torch.Tensor, name: str, codec: str) -> torch.Tensor:
    if scale.dtype != torch.float32 or tuple(scale.shape) != (1,):
        raise CorruptError(f"{codec} update: {name} has {scale.numel()} {scale.dtype} scales, the codec sends 1 float32")
    if not bool(torch.isfinite(scale).all()) or float(scale[0]) < 0:
        raise CorruptError(f"{codec} update: {name} has a negative or non-finite scale")
    if codes.numel() and int(codes.min()) < -QMAX:
        raise CorruptError(f"{codec} update: {name} holds -128, outside the codec's range [-127, 127]")
    return dequantise(codes, scale)


def _element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
