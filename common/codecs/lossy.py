"""Lossy dense upload codecs by cast: `fp16` and `bf16` (`int8` is common/codecs/int8.py).

Both keep the safetensors layout of `raw` (common/tensorcodec.py), so the container's own checks
(header, offsets, no holes, no duplicates) still apply; what changes is which dtype each tensor travels in.
Only floating-point tensors are compressed; integer buffers (BatchNorm's step counter) travel as they are.
"""

from __future__ import annotations

import math

import torch

from fedtl.common import tensorcodec
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.raw import HEADER_ALLOWANCE
from fedtl.common.errors import CorruptError


def _compressed(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


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


def _same_names(tensors: dict[str, torch.Tensor], specs: Specs | dict) -> None:
    if set(tensors) != set(specs):
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        raise CorruptError(f"update tensors differ from what the codec sends: missing {missing[:5]}, unexpected {extra[:5]}")


def _raw_bytes(specs: Specs) -> int:
    return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in specs.values())
