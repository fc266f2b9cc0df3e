"""`raw`: the tensors exactly, in the safetensors layout of common/tensorcodec.py (the default, lossless)."""

from __future__ import annotations

import math

import torch

from fedtl.common import tensorcodec
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource

# A blob may exceed its payload by at most this much header (names, shapes, offsets as JSON).
HEADER_ALLOWANCE = 1 << 20
_ELEMENT_BYTES = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in tensorcodec.DTYPE_TO_CODE}


class RawCodec(UpdateCodec):
    name = "raw"

    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        payload = sum(math.prod(shape) * _ELEMENT_BYTES[dtype] for dtype, shape in specs.values())
        return payload, payload + HEADER_ALLOWANCE

    def encode(self, source: UpdateSource, out: bytearray | None = None) -> bytearray | memoryview:
        # Meta tensors carry dtype and shape without memory: enough to plan the layout.
        layout = tensorcodec.plan({n: torch.empty(shape, dtype=dtype, device="meta") for n, (dtype, shape) in source.specs.items()})
        return tensorcodec.build(layout, lambda spec, destination: source.write(spec.name, destination), out)

    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        return tensorcodec.decode(blob).tensors
