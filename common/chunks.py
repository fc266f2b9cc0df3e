"""Split blobs into bounded chunks and reassemble them with length and digest checks (no network here)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from fedtl.common.errors import CorruptError, DigestMismatch, OversizeError, TruncatedError

MAX_CHUNK_BYTES = 4 << 20
# Room for protobuf framing (tag + varint length), so a chunk still fits gRPC's default 4 MiB message cap.
_FRAMING_SLACK = 64
# Chosen by bench/transport.py (bench/RESULTS.md): the largest chunk that fits gRPC's default cap was
# fastest with 1, 4 and 16 receivers (59-67% of the raw-gRPC floor, against 38-50% at 1 MiB), since
# per-message costs dominate once verification is paid per byte anyway.
DEFAULT_CHUNK_BYTES = MAX_CHUNK_BYTES - _FRAMING_SLACK
# Uploads use 1 MiB chunks: a server with many concurrent uploads holds a message or two per stream in
# flight, so smaller messages keep its peak memory flat in the number of clients (bench/scale.py).
UPLOAD_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Manifest:
    total_bytes: int
    sha256: str  # lowercase hex


def manifest_of(blob: bytes | bytearray | memoryview) -> Manifest:
    return Manifest(len(blob), hashlib.sha256(blob).hexdigest())


def split(blob: bytes | bytearray | memoryview, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[memoryview]:
    """Yield consecutive zero-copy slices of at most `chunk_bytes`."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES - _FRAMING_SLACK:
        raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_BYTES - _FRAMING_SLACK} bytes, got {chunk_bytes}")
    view = memoryview(blob)
    for start in range(0, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]


class BlobAssembler:
    """Receive one blob: refuse oversize before allocating, hash while filling, verify at the end."""

    def __init__(self, manifest: Manifest, max_bytes: int, hash_while_receiving: bool = True,
                 buffer: bytearray | None = None) -> None:
        """`buffer` (at least total_bytes long) is reused instead of allocating: a fresh 45 MB bytearray costs
        its zero-fill and page faults every time, a fifth of a server's CPU in bench/round_overhead.py."""
        if manifest.total_bytes > max_bytes:
            raise OversizeError(f"announced {manifest.total_bytes} bytes, more than the {max_bytes} expected at most")
        if len(manifest.sha256) != 64 or any(c not in "0123456789abcdef" for c in manifest.sha256):
            raise CorruptError(f"manifest digest {manifest.sha256[:80]!r} is not a lowercase hex sha256")
        self.manifest = manifest
        if buffer is None or len(buffer) < manifest.total_bytes:
            buffer = bytearray(manifest.total_bytes)
        self._buffer = buffer
        self._view = memoryview(buffer)[: manifest.total_bytes]
        self._filled = 0
        # Hashing while receiving overlaps it with the network (a client); hashing in finish() lets a
        # server verify several uploads in parallel on worker threads instead of on its event loop.
        self._hash = hashlib.sha256() if hash_while_receiving else None

    @property
    def received(self) -> int:
        return self._filled

    def add(self, data: bytes | memoryview) -> None:
        end = self._filled + len(data)
        if end > self.manifest.total_bytes:
            raise OversizeError(f"stream carries more than the {self.manifest.total_bytes} bytes announced")
        if not len(data):
            raise CorruptError("empty data chunk")
        self._view[self._filled : end] = data
        if self._hash is not None:
            self._hash.update(data)
        self._filled = end

    def finish(self) -> memoryview:
        """Return the verified blob (a view of exactly its bytes); afterwards the assembler must not be used."""
        if self._filled != self.manifest.total_bytes:
            raise TruncatedError(f"stream ended after {self._filled} of {self.manifest.total_bytes} bytes")
        digest = (self._hash or hashlib.sha256(self._view)).hexdigest()
        if digest != self.manifest.sha256:
            raise DigestMismatch(f"received bytes hash to {digest[:16]}…, the manifest announced {self.manifest.sha256[:16]}…")
        return self._view
