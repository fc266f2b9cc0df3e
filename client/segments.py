"""Model segments the client has received, by digest: in memory, and the static one on disk.

The frozen backbone (the static segment) is downloaded once; a restarted client reads it back
from its work directory after re-checking its sha256, so a stale or damaged copy is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from fedtl.common import checkpoint, codecs, tensorcodec
from fedtl.common.codecs.delta import apply_steps
from fedtl.common.codecs.packing import NAMES
from fedtl.common.config import SegmentRef
from fedtl.common.errors import CorruptError

Specs = dict[str, tuple[torch.dtype, tuple[int, ...]]]

logger = logging.getLogger(__name__)


class SegmentStore:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, dict[str, torch.Tensor]] = {}  # digest -> tensors; one per segment name
        self._names: dict[str, str] = {}  # segment name -> digest held
        self._buffers: dict[str, list[bytearray]] = {}  # download buffers by segment name, used in turn
        self.downloaded_bytes = 0

    def fetch(self, ref: SegmentRef, download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray],
              specs: Specs | None = None) -> tuple[dict[str, torch.Tensor], bool]:
        """Tensors of `ref`, decoded to the model's dtypes (`specs`, for a lossy download codec); download only on a
        miss. Returns (tensors, was_cached).

        The trainable segment changes every round, so its downloads alternate between two buffers:
        the previous version's tensors stay valid while the next one arrives, and no 45 MB buffer is
        allocated (and zero-filled) per round."""
        held = self._memory.get(ref.sha256)
        if held is not None:
            return held, True
        tensors = self._from_disk(ref)
        cached = tensors is not None
        if tensors is None:
            blob = download(ref, self._next_buffer(ref))  # verified against ref.sha256 while it arrives
            self.downloaded_bytes += len(blob)
            tensors = _decoded(ref, blob, specs or {})
            if ref.name == "static":
                self._to_disk(ref, blob)
        self._keep(ref, tensors)
        return tensors, cached

    def fetch_delta(self, full: SegmentRef, delta: SegmentRef, download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray]) -> dict[str, torch.Tensor] | None:
        """The version `full` names, rebuilt from the held version `delta.base` plus the downloaded steps, or None when
        that version is not held or the sum's digest differs from `full`'s (then the caller downloads it whole)."""
        base = self._memory.get(delta.base)
        if base is None:
            return None
        blob = download(delta, None)
        self.downloaded_bytes += len(blob)
        steps = codecs.get(delta.encoding).decode(blob, {n: (t.dtype, tuple(t.shape)) for n, t in base.items()})
        tensors = apply_steps(base, steps)
        if tensorcodec.sha256_hex(tensorcodec.encode(tensors)) != full.sha256:
            logger.warning("the model rebuilt from its delta does not match version %s…; downloading it whole", full.sha256[:12])
            return None
        self._keep(full, tensors)
        return tensors

    def _keep(self, ref: SegmentRef, tensors: dict[str, torch.Tensor]) -> None:
        old = self._names.get(ref.name)
        if old and old != ref.sha256:
            self._memory.pop(old, None)
        self._names[ref.name] = ref.sha256
        self._memory[ref.sha256] = tensors

    def _next_buffer(self, ref: SegmentRef) -> bytearray | None:
        if ref.name != "trainable":
            return None  # the static segment arrives once
        pair = self._buffers.setdefault(ref.name, [])
        if len(pair) < 2 or len(pair[0]) < ref.total_bytes:
            pair.append(bytearray(ref.total_bytes))
            del pair[:-2]
        pair.reverse()
        return pair[0]

    def _path(self, ref: SegmentRef) -> Path | None:
        return None if self.folder is None else self.folder / f"{ref.name}-{ref.sha256}.safetensors"

    def _from_disk(self, ref: SegmentRef) -> dict[str, torch.Tensor] | None:
        path = self._path(ref)
        if path is None or not path.is_file():
            return None
        blob = bytearray(path.read_bytes())
        if len(blob) != ref.total_bytes or hashlib.sha256(blob).hexdigest() != ref.sha256:
            logger.warning("cached segment %s is damaged; downloading it again", path.name)
            path.unlink(missing_ok=True)
            return None
        return dict(tensorcodec.decode(blob).tensors)

    def _to_disk(self, ref: SegmentRef, blob: memoryview | bytearray) -> None:
        path = self._path(ref)
        if path is None:
            return
        for old in path.parent.glob(f"{ref.name}-*.safetensors"):
            old.unlink(missing_ok=True)
        checkpoint.write_bytes_atomic(path, blob)


def _decoded(ref: SegmentRef, blob: memoryview | bytearray, specs: Specs) -> dict[str, torch.Tensor]:
    if ref.encoding == "raw":
        return dict(tensorcodec.decode(blob).tensors)
    decoded = tensorcodec.decode(blob)  # the container's own checks first; the codec checks the rest
    names = _names(decoded.metadata[NAMES]) if NAMES in decoded.metadata else decoded.tensors  # packed int8 lists them
    wanted = {n: specs[n] for n in names if n in specs}
    return codecs.get(ref.encoding).decode(blob, wanted)


def _names(listed: str) -> list[str]:
    try:
        names = json.loads(listed)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CorruptError("the segment's list of tensor names is not a JSON list of strings")
    return names
