"""Lossy dense upload codecs: `fp16` and `bf16` (a cast), `int8` (8 bits a value, one scale per output channel).

All three keep the safetensors layout of `raw` (common/tensorcodec.py), so the container's own checks
(header, offsets, no holes, no duplicates) still apply; what changes is which dtype each tensor travels in.
Only floating-point tensors are compressed; integer buffers (BatchNorm's step counter) travel as they are.

`int8` rounds stochastically: q = floor(x / s + u), u ~ U[0, 1), with s = max|row| / 127, so the decoded
value q * s is an unbiased estimate of x (E[q * s] = x) with error below s per element: averaging many
clients' updates averages the rounding error away instead of accumulating a bias (QSGD, Alistarh et al. 2017).
Decoding checks everything a hostile client could bend: the stored dtype and shape of every tensor, the
number of scales, finite non-negative scales, and values inside [-127, 127].
"""

from __future__ import annotations

import math
import secrets

import torch

from fedtl.common import tensorcodec
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.raw import HEADER_ALLOWANCE
from fedtl.common.errors import CorruptError

SCALE = ".__scale"  # suffix of an int8 tensor's scales in the blob
QMAX = 127


def _compressed(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One scale per output channel (dim 0) for matrices and convolutions, one for a vector or scalar."""
    return (shape[0],) if len(shape) >= 2 else (1,)


class CastCodec(UpdateCodec):
    """Float tensors travel as `wire` (fp16 or bf16) and are widened back to their own dtype."""

    def __init__(self, name: str, wire: torch.dtype) -> None:
        self.name, self.wire = name, wire

    def _stored(self, specs: Specs, exact: frozenset[str] = frozenset()) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {n: (self.wire if _compressed(d) and n not in exact else d, s) for n, (d, s) in specs.items()}

    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        payload = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in self._stored(specs).values())
        return payload, _raw_bytes(specs) + HEADER_ALLOWANCE  # at most: every tensor sent as it is

    def encode(self, source: UpdateSource, out: bytearray | None = None) -> bytearray | memoryview:
        stored = self._stored(source.specs, source.exact)
        layout = tensorcodec.plan({n: torch.empty(s, dtype=d, device="meta") for n, (d, s) in stored.items()})

        def fill(spec: tensorcodec.TensorSpec, destination: torch.Tensor) -> None:
            dtype, shape = source.specs[spec.name]
            if destination.dtype == dtype:
                source.write(spec.name, destination)
                return
            full = torch.empty(shape, dtype=dtype)
            source.write(spec.name, full)
            destination.copy_(full)  # round to nearest (torch's cast)
        return tensorcodec.build(layout, fill, out)

    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        tensors = tensorcodec.decode(blob).tensors
        _same_names(tensors, specs)
        out = {}
        for name, (dtype, shape) in specs.items():
            stored = tensors[name]
            want = self.wire if _compressed(dtype) and stored.dtype != dtype else dtype  # a float tensor may come as it is
            if stored.dtype != want or tuple(stored.shape) != tuple(shape):
                raise CorruptError(f"{self.name} update: tensor {name} is {stored.dtype} {tuple(stored.shape)}, the codec sends {want} {tuple(shape)}")
            out[name] = stored.to(dtype) if stored.dtype != dtype else stored
        return out


class Int8Codec(UpdateCodec):
    name = "int8"

    def _stored(self, specs: Specs, exact: frozenset[str] = frozenset()) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        stored: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for name, (dtype, shape) in specs.items():
            if name.endswith(SCALE):
                raise CorruptError(f"int8 cannot carry a tensor named {name!r}: the suffix {SCALE} is its scales'")
            if _compressed(dtype) and name not in exact:
                stored[name] = (torch.int8, shape)
                stored[name + SCALE] = (torch.float32, _scale_shape(shape))
            else:
                stored[name] = (dtype, shape)
        return stored

    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        payload = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in self._stored(specs).values())
        return payload, max(payload, _raw_bytes(specs)) + 2 * HEADER_ALLOWANCE  # twice the names: every float tensor has its scales

    def encode(self, source: UpdateSource, out: bytearray | None = None) -> bytearray | memoryview:
        stored = self._stored(source.specs, source.exact)
        layout = tensorcodec.plan({n: torch.empty(s, dtype=d, device="meta") for n, (d, s) in stored.items()})
        generator = torch.Generator().manual_seed(secrets.randbits(63))  # rounding noise: unbiased needs fresh, not shared
        pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # a tensor's codes and scales, until both are written

        def quantised(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            if name not in pending:
                dtype, shape = source.specs[name]
                full = torch.empty(shape, dtype=dtype)
                source.write(name, full)
                pending[name] = quantise(full, generator)
            return pending[name]

        written: dict[str, int] = {}

        def fill(spec: tensorcodec.TensorSpec, destination: torch.Tensor) -> None:
            name = spec.name
            if name in source.specs and (not _compressed(source.specs[name][0]) or name in source.exact):
                source.write(name, destination)
                return
            base = name if name in source.specs else name[: -len(SCALE)]
            codes, scales = quantised(base)
            destination.copy_(codes if name == base else scales)
            written[base] = written.get(base, 0) + 1
            if written[base] == 2:
                del pending[base]  # codes and scales are both in the blob

        return tensorcodec.build(layout, fill, out)

    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        tensors = tensorcodec.decode(blob).tensors
        exact = frozenset(n for n, (d, _) in specs.items() if _compressed(d) and n in tensors and n + SCALE not in tensors)
        _same_names(tensors, self._stored(specs, exact))
        out = {}
        for name, (dtype, shape) in specs.items():
            codes = tensors[name]
            if not _compressed(dtype) or name in exact:
                if codes.dtype != dtype or tuple(codes.shape) != tuple(shape):
                    raise CorruptError(f"int8 update: tensor {name} is {codes.dtype} {tuple(codes.shape)}, expected {dtype} {tuple(shape)}")
                out[name] = codes
                continue
            scales = tensors[name + SCALE]
            if codes.dtype != torch.int8 or tuple(codes.shape) != tuple(shape):
                raise CorruptError(f"int8 update: tensor {name} is {codes.dtype} {tuple(codes.shape)}, the codec sends int8 {tuple(shape)}")
            if scales.dtype != torch.float32 or tuple(scales.shape) != _scale_shape(tuple(shape)):
                raise CorruptError(f"int8 update: {name} has {scales.numel()} {scales.dtype} scales, the codec sends "
                                   f"{math.prod(_scale_shape(tuple(shape)))} float32")
            if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
                raise CorruptError(f"int8 update: {name} has a negative or non-finite scale")
            if codes.numel() and int(codes.min()) < -QMAX:
                raise CorruptError(f"int8 update: {name} holds -128, outside the codec's range [-127, 127]")
            out[name] = dequantise(codes, scales).to(dtype)
        return out


def quantise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 scales): stochastic rounding, unbiased, |error| < scale per element."""
    x = x.detach().float()
    rows = _rows(x)
    scales = rows.abs().amax(dim=1) / QMAX if rows.numel() else torch.zeros(rows.shape[0])
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    noise = torch.rand(rows.shape, generator=generator)
    codes = torch.floor(rows / safe[:, None] + noise).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes.reshape(x.shape), scales.reshape(_scale_shape(tuple(x.shape)))


def dequantise(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows = _rows(codes)
    return (rows.float() * scales.reshape(-1, 1)).reshape(codes.shape)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """One row per output channel (a matrix view; empty tensors included)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:])) if t.dim() >= 2 else t.reshape(1, t.numel())


def _same_names(tensors: dict[str, torch.Tensor], specs: Specs | dict) -> None:
    if set(tensors) != set(specs):
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        raise CorruptError(f"update tensors differ from what the codec sends: missing {missing[:5]}, unexpected {extra[:5]}")


def _raw_bytes(specs: Specs) -> int:
    return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in specs.values())
