"""The model versions the coordinator serves: the static segment (once per run) and the current trainable one.

Each version is serialised to chunk messages once (server/model_state.py) and every download
shares those bytes. Publishing a new trainable version stops serving the previous one, so a
client still asking for it learns the round moved on.
"""

from __future__ import annotations

import asyncio

from fedtl.common.config import SegmentRef
from fedtl.server.model_state import PreparedSegment


class SegmentGone(LookupError):
    """A download asked for a model version the server no longer serves."""


class ModelServer:
    def __init__(self, max_concurrent_downloads: int) -> None:
        self._segments: dict[str, PreparedSegment] = {}
        self.static: PreparedSegment | None = None
        self.trainable: PreparedSegment | None = None
        self.alternatives: list[PreparedSegment] = []  # other routes to the trainable version (a delta)
        self.bytes_sent = 0  # since the last round record
        # Each download stream holds a chunk or two in gRPC's send path; a few streams already use every
        # core, so more at once only costs memory (bench/scale.py).
        self.sending = asyncio.Semaphore(max_concurrent_downloads)

    def publish(self, trainable: list[PreparedSegment], static: PreparedSegment | None = None) -> None:
        """Serve this trainable version (its full segment first, then any delta from the previous one) and the static
        segment (if given or already served); stop serving older versions."""
        if static is not None:
            self.static = static
        self.trainable, self.alternatives = trainable[0], list(trainable[1:])
        self._segments = {s.manifest.sha256: s for s in (self.static, *trainable) if s is not None}

    @property
    def refs(self) -> tuple[SegmentRef, ...]:
        return tuple(s.ref for s in (self.static, self.trainable, *self.alternatives) if s is not None)

    @property
    def base_digest(self) -> str:
        assert self.trainable is not None, "nothing published yet"
        return self.trainable.manifest.sha256

    def segment(self, digest: str) -> PreparedSegment:
        try:
            return self._segments[digest]
        except KeyError:
            raise SegmentGone(f"model version {digest[:16]!r}… is not served any more (the round moved on); wait for the next task") from None

    def sent(self, nbytes: int) -> None:
        self.bytes_sent += nbytes

    def take_bytes_sent(self) -> int:
        sent, self.bytes_sent = self.bytes_sent, 0
        return sent
