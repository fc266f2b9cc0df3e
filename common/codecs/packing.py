"""The packed layout of the compressing codecs (`int8`, `topk:F`, `topk+int8:F`) and its parts.

Both sides know the update's specs (names, dtypes, shapes in the model's order), so a packed blob names
no tensor: it holds a few sections, each all of one kind of data concatenated in spec order, inside the
same safetensors container as `raw` (its header, offset and no-holes checks still apply). Per-tensor
entries cost ~90 bytes of JSON each; EfficientNet-Lite0's 296 tensors with their scales and indices
cost 40-80 kB a blob that way, as much as a top-k update's values.

- `Sections.of(specs, exact)`: the float tensors the codec compresses, the float buffers it sends nearly
  exactly (`exact`), and the rest (integer buffers), which travel bit for bit.
- Buffers (BatchNorm statistics) travel as float16 rounded toward zero, or float32 when a value is out of
  float16's range. Rounding toward zero never flips a sign and never grows a change, so a running variance
  plus its decoded change stays at or above the new variance's smaller neighbour: never below zero, and a
  weighted mean of such versions neither (the error is below 2**-10 of the change).
- Indices: sorted, gap-coded, Rice-coded (Golomb with a power-of-two divisor 2**b): each gap's low b bits
  packed, its high part in unary. Gaps of a top-1 % selection average ~100, so an index costs ~8.5 bits
  instead of 16 (u16 gaps) or 64 (int64). Decoding is vectorised (numpy bit unpacking, no Python loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedtl.common.codecs.base import Specs, UpdateSource
from fedtl.common.errors import CorruptError
from fedtl.common.tensorcodec import TensorSpec

EXACT, EXACT_MASK, OTHER = "exact", "exact.mask", "other"
INDEX_LOW, INDEX_HIGH, INDEX_B = "index.low", "index.high", "index.b"
NAMES = "names"  # metadata: the tensors' names (JSON list), when the receiver does not know them
MAX_RICE_BITS = 40
_F16_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True)
class Sections:
    lossy: tuple[str, ...]  # float tensors the codec compresses
    exact: tuple[str, ...]  # float buffers: float16 toward zero
    other: tuple[str, ...]  # integer and bool tensors, bit for bit
    specs: Specs

    @staticmethod
    def of(specs: Specs, exact: frozenset[str] = frozenset()) -> Sections:
        floats = [n for n, (d, _) in specs.items() if d.is_floating_point]
        return Sections(tuple(n for n in floats if n not in exact), tuple(n for n in floats if n in exact),
                        tuple(n for n, (d, _) in specs.items() if not d.is_floating_point), specs)

    @staticmethod
    def from_mask(specs: Specs, mask: torch.Tensor) -> Sections:
        """The sender says which float tensors it sent as buffers: one bit each, in spec order. Trusting it costs
        nothing: a parameter marked as a buffer only travels more precisely."""
        floats = [n for n, (d, _) in specs.items() if d.is_floating_point]
        if mask.dtype != torch.uint8 or tuple(mask.shape) != (math.ceil(len(floats) / 8),):
            raise CorruptError(f"update buffer mask: {mask.numel()} {mask.dtype}, the codec sends {math.ceil(len(floats) / 8)} bytes")
        bits = np.unpackbits(mask.numpy(), bitorder="little")
        if bits[len(floats):].any():
            raise CorruptError("update buffer mask: bits set past the last float tensor")
        return Sections.of(specs, frozenset(n for n, bit in zip(floats, bits) if bit))

    def mask(self) -> torch.Tensor:
        floats = [n for n, (d, _) in self.specs.items() if d.is_floating_point]
        exact = set(self.exact)
        return torch.from_numpy(np.packbits(np.array([n in exact for n in floats], dtype=np.uint8), bitorder="little"))

    def numel(self, names: tuple[str, ...]) -> int:
        return sum(math.prod(self.specs[n][1]) for n in names)

    def other_bytes(self) -> int:
        return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in (self.specs[n] for n in self.other))


def pack_exact(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Buffers as one float16 vector rounded toward zero, or float32 as they are when one is out of range."""
    flat = torch.cat([t.reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)
    if flat.numel() and float(flat.abs().max()) > _F16_MAX:  # inf/NaN too: validation refuses them after decoding
        return flat
    nearest = flat.to(torch.float16)
    overshoot = nearest.float().abs() > flat.abs()
    return torch.where(overshoot, torch.nextafter(nearest, torch.zeros_like(nearest)), nearest)


def unpack_exact(stored: torch.Tensor, sections: Sections) -> dict[str, torch.Tensor]:
    numel = sections.numel(sections.exact)
    if stored.dtype not in (torch.float16, torch.float32) or tuple(stored.shape) != (numel,):
        raise CorruptError(f"update buffers: {stored.numel()} {stored.dtype} values, the codec sends {numel} float16 or float32")
    return _split(stored, sections.exact, sections.specs)


def pack_other(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Integer tensors' bytes, concatenated (each keeps its dtype: the specs say which)."""
    parts = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors if t.numel()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def unpack_other(stored: torch.Tensor, sections: Sections) -> dict[str, torch.Tensor]:
    if stored.dtype != torch.uint8 or tuple(stored.shape) != (sections.other_bytes(),):
        raise CorruptError(f"update integer tensors: {stored.numel()} {stored.dtype}, the codec sends {sections.other_bytes()} bytes")
    out, at = {}, 0
    for name in sections.other:
        dtype, shape = sections.specs[name]
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        out[name] = stored[at:at + size].clone().view(dtype).reshape(shape)  # clone: aligned for its dtype
        at += size
    return out


def _split(flat: torch.Tensor, names: tuple[str, ...], specs: Specs) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for name in names:
        dtype, shape = specs[name]
        n = math.prod(shape)
        out[name] = flat[at:at + n].to(dtype).reshape(shape)
        at += n
    return out


def rice_encode(indices: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Sorted distinct indices below n as Rice-coded gaps: {b, low bits, unary high parts}."""
    idx = indices.numpy().astype(np.int64)
    k = idx.size
    gaps = np.diff(idx, prepend=0)
    mean = max(1.0, (n / k) if k else 1.0)
    b = min(MAX_RICE_BITS, max(0, int(math.floor(math.log2(mean * math.log(2)))) if mean * math.log(2) >= 1 else 0))
    low = gaps & ((1 << b) - 1)
    bits = ((low[:, None] >> np.arange(b, dtype=np.int64)) & 1).astype(np.uint8) if b else np.zeros((k, 0), np.uint8)
    high = gaps >> b
    stops = np.cumsum(high + 1) - 1  # each gap's unary part: high ones, then a zero
    unary = np.ones(int(stops[-1]) + 1 if k else 0, dtype=np.uint8)
    unary[stops] = 0
    return {INDEX_B: torch.tensor([b], dtype=torch.uint8),
            INDEX_LOW: torch.from_numpy(np.packbits(bits.reshape(-1), bitorder="little")),
            INDEX_HIGH: torch.from_numpy(np.packbits(unary, bitorder="little") | _padding(unary.size))}


def rice_decode(stored: dict[str, torch.Tensor], k: int, n: int) -> torch.Tensor:
    """int64 indices, strictly increasing and below n, or a CorruptError naming what is wrong."""
    b_t, low, high = stored[INDEX_B], stored[INDEX_LOW], stored[INDEX_HIGH]
    for name, t, shape in ((INDEX_B, b_t, (1,)), (INDEX_LOW, low, None), (INDEX_HIGH, high, None)):
        if t.dtype != torch.uint8 or t.dim() != 1 or (shape is not None and tuple(t.shape) != shape):
            raise CorruptError(f"top-k indices: {name} is {t.dtype} {tuple(t.shape)}, the codec sends a uint8 vector")
    b = int(b_t[0])
    if b > MAX_RICE_BITS:
        raise CorruptError(f"top-k indices: Rice parameter {b} is above {MAX_RICE_BITS}")
    if low.numel() != math.ceil(k * b / 8):
        raise CorruptError(f"top-k indices: {low.numel()} bytes of low bits, {k} indices of {b} bits need {math.ceil(k * b / 8)}")
    unary = np.unpackbits(high.numpy(), bitorder="little")
    stops = np.flatnonzero(unary == 0)
    if stops.size != k or (k and high.numel() != int(stops[-1]) // 8 + 1) or (not k and high.numel()):
        raise CorruptError(f"top-k indices: the unary stream holds {stops.size} gaps in {high.numel()} bytes, the codec sends {k}")
    if k and not bool(unary[int(stops[-1]) + 1:].all()):
        raise CorruptError("top-k indices: the unary stream's padding is not all ones")
    high_part = np.diff(stops, prepend=-1) - 1
    if k and int(high_part.max()) > (n >> b):  # no valid gap exceeds n (and shifting a longer run could overflow)
        raise CorruptError(f"top-k indices: a gap beyond the {n} entries")
    bits = np.unpackbits(low.numpy(), bitorder="little")[: k * b].reshape(k, b).astype(np.int64)
    gaps = (high_part << b) | (bits << np.arange(b, dtype=np.int64)).sum(axis=1)
    if k > 1 and int(gaps[1:].min()) < 1:
        raise CorruptError("top-k indices: an index repeats or goes back (indices must be strictly increasing)")
    indices = np.cumsum(gaps)
    if k and int(indices[-1]) >= n:
        raise CorruptError(f"top-k indices: index {int(indices[-1])} is out of range for {n} entries")
    return torch.from_numpy(indices)


def rice_max_bytes(k: int, n: int) -> int:
    """The most bytes any valid encoding of k indices below n can take (for the size check on the header)."""
    return 1 + math.ceil(k * MAX_RICE_BITS / 8) + (n + k) // 8 + 1


def _padding(bits: int) -> np.ndarray | int:
    """Ones in the last byte's unused bits, so padding never reads as a gap's end."""
    spare = -bits % 8
    if not spare:
        return 0
    out = np.zeros(math.ceil(bits / 8), dtype=np.uint8)
    out[-1] = (0xFF << (8 - spare)) & 0xFF
    return out


def pack_rest(sections: Sections, source: UpdateSource) -> dict[str, torch.Tensor]:
    """The sections every packed codec shares: buffers, which float tensors they are, integer tensors."""
    return {EXACT: pack_exact([materialise(source, n) for n in sections.exact]), EXACT_MASK: sections.mask(),
            OTHER: pack_other([materialise(source, n) for n in sections.other])}


def unpack_rest(stored: dict[str, torch.Tensor], sections: Sections) -> dict[str, torch.Tensor]:
    return unpack_exact(stored[EXACT], sections) | unpack_other(stored[OTHER], sections)


def materialise(source: UpdateSource, name: str) -> torch.Tensor:
    """One tensor of an update (float tensors as float32, the rest in their dtype)."""
    dtype, shape = source.specs[name]
    tensor = torch.empty(shape, dtype=dtype)
    source.write(name, tensor)
    return tensor.float() if dtype.is_floating_point else tensor


def copy_part(parts: dict[str, torch.Tensor]) -> Callable[[TensorSpec, torch.Tensor], None]:
    """tensorcodec.build's writer for a blob of named sections: each section copied into its place."""

    def write(spec: TensorSpec, out: torch.Tensor) -> None:
        out.copy_(parts[spec.name])

    return write
