"""Model segments the client has received, by digest: in memory, and the static one on disk.

The frozen backbone (the static segment) is downloaded once; a restarted client reads it back
from its work directory after re-checking its sha256, so a stale or damaged copy is never used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from common import checkpoint, tensorcodec
from common.config import SegmentRef

logger = logging.getLogger(__name__)


class SegmentStore:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, dict[str, torch.Tensor]] = {}  # digest -> tensors; one per segment name
        self._names: dict[str, str] = {}  # segment name -> digest held
        self._buffers: dict[str, list[bytearray]] = {}  # download buffers by segment name, used in turn
        self.downloaded_bytes = 0

    def fetch(self, ref: SegmentRef, download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray]) -> tuple[dict[str, torch.Tensor], bool]:
        """Tensors of `ref`; download only on a miss. Returns (tensors, was_cached).

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
            tensors = dict(tensorcodec.decode(blob).tensors)
            if ref.name == "static":
                self._to_disk(ref, blob)
        old = self._names.get(ref.name)
        if old and old != ref.sha256:
            self._memory.pop(old, None)
        self._names[ref.name] = ref.sha256
        self._memory[ref.sha256] = tensors
        return tensors, cached

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
