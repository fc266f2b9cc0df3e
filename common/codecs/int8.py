"""`int8`: 8 bits a value, stochastic rounding (unbiased), in the packed layout (common/codecs/packing.py).

q = floor(x / s + u), u ~ U[0, 1), so the decoded q * s is an unbiased estimate of x (E[q * s] = x) with error
below s per element: averaging many clients' updates averages the rounding away instead of accumulating a bias
(QSGD, Alistarh et al. 2017). One scale per output channel where a channel has at least ROW_MIN entries (a
matrix's or convolution's rows), else one for the whole tensor: a depthwise 3x3 channel has 9 entries, and a
scale for each would cost almost half as much as its values. Scales travel as bfloat16 rounded up, and
quantisation uses the rounded scale, so codes stay within [-127, 127] and the estimate stays unbiased.
Buffers travel as float16 toward zero (packing.pack_exact), integer tensors bit for bit.

Decoding checks everything a hostile client could bend: every section's dtype and length, finite
non-negative scales, codes inside [-127, 127].
"""

from __future__ import annotations

import json
import math
import secrets

import torch

from fedtl.common import tensorcodec
from fedtl.common.codecs import packing
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.packing import EXACT, EXACT_MASK, OTHER, Sections
from fedtl.common.codecs.raw import HEADER_ALLOWANCE
from fedtl.common.errors import CorruptError

QMAX = 127
ROW_MIN = 32
CODES, SCALES = "codes", "scales"


def scale_groups(shape: tuple[int, ...]) -> int:
    """How many scales a tensor of this shape travels with: one a row (output channel) or one."""
    return shape[0] if len(shape) >= 2 and math.prod(shape[1:]) >= ROW_MIN else 1


def wire_scales(largest: torch.Tensor) -> torch.Tensor:
    """bfloat16 scales no smaller than largest / 127 (rounded up, so no code ever needs clamping)."""
    wanted = largest.float() / QMAX
    scales = wanted.to(torch.bfloat16)
    return torch.where(scales.float() < wanted, torch.nextafter(scales, torch.full_like(scales, math.inf)), scales)


def quantise(rows: torch.Tensor, scales: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """int8 codes of a (groups, n) matrix with one bfloat16 scale a row: floor(x / s + u)."""
    safe = torch.where(scales > 0, scales.float(), torch.ones(scales.shape))
    noise = torch.rand(rows.shape, generator=generator)
    return torch.floor(rows / safe[:, None] + noise).clamp_(-QMAX, QMAX).to(torch.int8)


def checked_scales(scales: torch.Tensor, count: int, codec: str) -> torch.Tensor:
    if scales.dtype != torch.bfloat16 or tuple(scales.shape) != (count,):
        raise CorruptError(f"{codec} update: {scales.numel()} {scales.dtype} scales, the codec sends {count} bfloat16")
    if count and (not bool(torch.isfinite(scales).all()) or bool((scales < 0).any())):
        raise CorruptError(f"{codec} update: a negative or non-finite scale")
    return scales.float()


def checked_codes(codes: torch.Tensor, count: int, codec: str) -> torch.Tensor:
    if codes.dtype != torch.int8 or tuple(codes.shape) != (count,):
        raise CorruptError(f"{codec} update: {codes.numel()} {codes.dtype} values, the codec sends {count} int8")
    if count and int(codes.min()) < -QMAX:
        raise CorruptError(f"{codec} update: a code of -128, outside the codec's range [-127, 127]")
    return codes


def expect_sections(stored: dict[str, torch.Tensor], expected: set[str], codec: str) -> None:
    if set(stored) != expected:
        missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
        raise CorruptError(f"{codec} update: sections differ from what the codec sends: missing {missing[:5]}, unexpected {extra[:5]}")


class Int8Codec(UpdateCodec):
    name = "int8"

    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        s = Sections.of(specs)
        codes = s.numel(s.lossy)
        scales = 2 * sum(scale_groups(specs[n][1]) for n in s.lossy)
        return codes + s.other_bytes(), codes + scales + s.other_bytes() + 4 * codes + HEADER_ALLOWANCE  # buffers: up to float32

    def encode(self, source: UpdateSource, out: bytearray | None = None, named: bool = False) -> bytearray | memoryview:
        """`named`: list the tensors' names in the blob's metadata, for a receiver that does not know them (a client
        downloading the whole trainable segment as int8); an upload's receiver knows them, so uploads do not pay."""
        s = Sections.of(source.specs, source.exact)
        generator = torch.Generator().manual_seed(secrets.randbits(63))  # rounding noise: unbiased needs fresh, not shared
        codes = torch.empty(s.numel(s.lossy), dtype=torch.int8)
        scales = torch.empty(sum(scale_groups(source.specs[n][1]) for n in s.lossy), dtype=torch.bfloat16)
        at = group = 0
        for name in s.lossy:
            rows = _grouped(packing.materialise(source, name), scale_groups(source.specs[name][1]))
            row_scales = wire_scales(rows.abs().amax(dim=1) if rows.numel() else torch.zeros(rows.shape[0]))
            codes[at:at + rows.numel()] = quantise(rows, row_scales, generator).reshape(-1)
            scales[group:group + rows.shape[0]] = row_scales
            at, group = at + rows.numel(), group + rows.shape[0]
        parts = {CODES: codes, SCALES: scales, **packing.pack_rest(s, source)}
        metadata = {packing.NAMES: json.dumps(list(source.specs))} if named else None
        return tensorcodec.build(tensorcodec.plan(parts, metadata), packing.copy_part(parts), out)

    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        stored = tensorcodec.decode(blob).tensors
        expect_sections(stored, {CODES, SCALES, EXACT, EXACT_MASK, OTHER}, self.name)
        s = Sections.from_mask(specs, stored[EXACT_MASK])
        codes = checked_codes(stored[CODES], s.numel(s.lossy), self.name)
        groups = [scale_groups(specs[n][1]) for n in s.lossy]
        scales = checked_scales(stored[SCALES], sum(groups), self.name)
        out: dict[str, torch.Tensor] = {}
        at = group = 0
        for name, g in zip(s.lossy, groups):
            dtype, shape = specs[name]
            n = math.prod(shape)
            rows = _grouped(codes[at:at + n], g).float() * scales[group:group + g, None]
            out[name] = rows.reshape(shape).to(dtype)
            at, group = at + n, group + g
        out |= packing.unpack_rest(stored, s)
        return {n: out[n] for n in specs}


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """One row a scale group (reshape(groups, -1) cannot infer a row length for an empty tensor)."""
    return t.reshape(groups, t.numel() // groups if groups else 0)
