"""Named tensors <-> one bytes blob in the safetensors format, with no copies beyond the one into the blob.

Layout (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header
length N, N bytes of JSON `{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`
padded with spaces to an 8-byte boundary, then one contiguous little-endian C-order payload
with no holes. Any safetensors reader loads our checkpoints, and nothing is ever unpickled.

Tensors are laid out by element size, largest first (stable otherwise), so every tensor
starts aligned to its element size and decoding is `torch.frombuffer` on the received
buffer: zero copies. The digest of a version is the sha256 of the whole blob, and encoding
is deterministic, so equal state gives equal digests.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedtl.common.errors import CorruptError, OversizeError, TruncatedError

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("the tensor wire format needs a little-endian host")

METADATA_KEY = "__metadata__"
MAX_HEADER_BYTES = 64 << 20
MAX_NAME_LENGTH = 1024

DTYPE_TO_CODE: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.int64: "I64",
    torch.uint64: "U64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
CODE_TO_DTYPE: dict[str, torch.dtype] = {code: dtype for dtype, code in DTYPE_TO_CODE.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # into the payload
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """Where each tensor sits in a blob; computed before anything is allocated."""

    specs: tuple[TensorSpec, ...]
    header: bytes  # the JSON header, already padded
    payload_bytes: int

    @property
    def total_bytes(self) -> int:
        return 8 + len(self.header) + self.payload_bytes

    @property
    def payload_start(self) -> int:
        return 8 + len(self.header)


def plan(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Layout:
    """Compute the blob layout for these tensors without touching their data."""
    items = list(tensors.items())
    for name, tensor in items:
        _check_name(name)
        if tensor.dtype not in DTYPE_TO_CODE:
            raise CorruptError(f"tensor {name!r}: dtype {tensor.dtype} has no wire code")
    # Largest element first keeps every tensor aligned without padding (the format allows no holes).
    items.sort(key=lambda item: -item[1].element_size())
    specs: list[TensorSpec] = []
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        specs.append(TensorSpec(name, tensor.dtype, tuple(tensor.shape), offset, nbytes))
        header[name] = {
            "dtype": DTYPE_TO_CODE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-(8 + len(raw)) % 8)
    return Layout(tuple(specs), raw, offset)


def build(layout: Layout, fill: Callable[[TensorSpec, torch.Tensor], None], out: bytearray | None = None) -> bytearray | memoryview:
    """Write the blob for `layout` (into `out` when it is big enough, else a new buffer): its header, then
    `fill(spec, destination)` writes each tensor straight into its place (a destination is a writable tensor
    view of the blob with the spec's dtype and shape). Returns exactly the blob's bytes."""
    blob = out if out is not None and len(out) >= layout.total_bytes else bytearray(layout.total_bytes)
    view = memoryview(blob)[: layout.total_bytes]
    view[:8] = struct.pack("<Q", len(layout.header))
    view[8 : layout.payload_start] = layout.header
    base = layout.payload_start
    for spec in layout.specs:
        if spec.nbytes == 0:
            continue
        count = spec.nbytes // _itemsize(spec.dtype)
        fill(spec, torch.frombuffer(blob, dtype=spec.dtype, count=count, offset=base + spec.offset).view(spec.shape))
    return blob if len(blob) == layout.total_bytes else view


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytearray:
    """Return the blob for these tensors: one allocation, one copy of each tensor."""

    def copy(spec: TensorSpec, destination: torch.Tensor) -> None:
        destination.copy_(tensors[spec.name].detach())

    blob = build(plan(tensors, metadata), copy)
    assert isinstance(blob, bytearray)
    return blob


def sha256_hex(blob: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Decoded:
    tensors: dict[str, torch.Tensor]  # views into the blob, in blob order
    metadata: dict[str, str]
    specs: tuple[TensorSpec, ...]


def read_header(blob: bytes | bytearray | memoryview, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[list[TensorSpec], dict[str, str], int]:
    """Parse and check the header; return (specs in header order, metadata, payload start). Reads no payload."""
    view = memoryview(blob)
    if len(view) < 8:
        raise TruncatedError(f"blob is {len(view)} bytes, shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > max_header_bytes:
        raise OversizeError(f"header declares {header_len} bytes, more than the {max_header_bytes} allowed")
    if 8 + header_len > len(view):
        raise TruncatedError(f"header declares {header_len} bytes but only {len(view) - 8} follow")
    try:
        text = bytes(view[8 : 8 + header_len]).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptError(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptError("header is not a JSON object")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptError("__metadata__ must map strings to strings")
    payload_len = len(view) - 8 - header_len
    specs = [_spec_from_entry(name, entry, payload_len) for name, entry in header.items()]
    _check_no_holes(specs, payload_len)
    return specs, metadata, 8 + header_len


def decode(blob: bytearray | memoryview | bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> Decoded:
    """Check the blob completely, then return tensors that are views of it (no copies).

    A read-only buffer (e.g. `bytes`) is copied once, since torch tensors must be writable.
    """
    if isinstance(blob, bytes) or (isinstance(blob, memoryview) and blob.readonly):
        blob = bytearray(blob)
    specs, metadata, start = read_header(blob, max_header_bytes)
    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.nbytes == 0:
            tensors[spec.name] = torch.empty(spec.shape, dtype=spec.dtype)
            continue
        count = spec.nbytes // _itemsize(spec.dtype)
        flat = torch.frombuffer(blob, dtype=spec.dtype, count=count, offset=start + spec.offset)
        tensors[spec.name] = flat.view(spec.shape)
    return Decoded(tensors, metadata, tuple(specs))


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors that hold a NaN or an infinity."""
    bad = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        checked = tensor.float() if tensor.element_size() == 1 else tensor  # float8 has no isfinite kernel
        if not bool(torch.isfinite(checked).all()):
            bad.append(name)
    return bad


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or name == METADATA_KEY:
        raise CorruptError(f"invalid tensor name {name!r}")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise CorruptError(f"header names {key!r} twice")
        result[key] = value
    return result


def _spec_from_entry(name: str, entry: object, payload_len: int) -> TensorSpec:
    _check_name(name)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CorruptError(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in CODE_TO_DTYPE:
        raise CorruptError(f"tensor {name!r}: unknown dtype {code!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CorruptError(f"tensor {name!r}: data_offsets must be two integers")
    begin, end = offsets
    dtype = CODE_TO_DTYPE[code]
    # Python integers do not overflow; compare against the payload before anything is allocated.
    nbytes = math.prod(shape) * _itemsize(dtype)
    if not 0 <= begin <= end <= payload_len:
        raise TruncatedError(f"tensor {name!r}: bytes {begin}..{end} lie outside the {payload_len}-byte payload")
    if end - begin != nbytes:
        raise CorruptError(f"tensor {name!r}: shape {shape} of {code} needs {nbytes} bytes, offsets give {end - begin}")
    if nbytes and begin % _itemsize(dtype):
        raise CorruptError(f"tensor {name!r}: offset {begin} is not aligned to its {_itemsize(dtype)}-byte elements")
    return TensorSpec(name, dtype, tuple(shape), begin, nbytes)


def _check_no_holes(specs: list[TensorSpec], payload_len: int) -> None:
    cursor = 0
    for spec in sorted((s for s in specs if s.nbytes), key=lambda s: s.offset):
        if spec.offset != cursor:
            kind = "overlaps the previous tensor" if spec.offset < cursor else f"leaves a hole at byte {cursor}"
            raise CorruptError(f"tensor {spec.name!r} {kind}")
        cursor = spec.offset + spec.nbytes
    if cursor != payload_len:
        raise CorruptError(f"payload has {payload_len - cursor} bytes no tensor accounts for")
