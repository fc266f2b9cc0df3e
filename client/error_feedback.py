"""Error feedback for biased codecs (top-k): what a round's encoding left out is added to the next round's update.

Without it, entries that are never among the largest never travel and top-k stalls; with it, every
entry's change is sent eventually (Stich et al. 2018; Deep Gradient Compression, Lin et al. 2018).
The residual is kept in the work dir (atomically, after the server accepted the update), so a
restarted client carries on where it stopped. It starts again from zero when what it refers to
changes: another run, another codec, or tensors with other names or shapes. An update the server
refused or never received leaves the residual as it was: nothing of that round was aggregated.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from fedtl.client.mods.base import ClientMod, Send, Upload
from fedtl.common import checkpoint, codecs
from fedtl.common.codecs import UpdateCodec, UpdateSource

logger = logging.getLogger(__name__)


class ErrorFeedback:
    def __init__(self, workdir: Path | None) -> None:
        self.path = None if workdir is None else workdir / "error_feedback.safetensors"
        self._residual: dict[str, torch.Tensor] | None = None
        self._key = ""  # run, codec and tensors the residual belongs to
        self._pending: tuple[str, dict[str, torch.Tensor]] | None = None

    def encode(self, codec: UpdateCodec, source: UpdateSource, run_id: str, out: bytearray | None = None) -> bytearray | memoryview:
        """Encode `source` plus the residual; remember what this encoding leaves out until `accepted()`.

        Buffers (`source.exact`) carry no residual: a buffer's change (BatchNorm's running variance) is a new
        value, not a step, and adding last round's leftovers to it could even make a variance negative."""
        if not codec.error_feedback:
            self._pending = None
            return codec.encode(source, out)
        key = _key(run_id, codec.name, source)
        residual = self._load(key)
        corrected = {}
        for name, (dtype, shape) in source.specs.items():
            tensor = torch.empty(shape, dtype=dtype)
            source.write(name, tensor)
            if name in residual:
                tensor.add_(residual[name])
            corrected[name] = tensor
        blob = codec.encode(UpdateSource.of(corrected, source.exact), out)
        sent = codec.decode(blob, source.specs)  # exactly what the server will decode
        left = {n: corrected[n].float() - sent[n].float() for n, (dtype, _) in source.specs.items()
                if dtype.is_floating_point and n not in source.exact}
        self._pending = (key, left)
        return blob

    def accepted(self) -> None:
        """The server took the update: what it left out becomes the residual, on disk before the next round."""
        if self._pending is None:
            return
        self._key, self._residual = self._pending
        self._pending = None
        if self.path is not None:
            checkpoint.save_tensors(self.path, self._residual, {"key": self._key})

    def norm(self) -> float:
        return 0.0 if not self._residual else float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in self._residual.values()])))

    def _load(self, key: str) -> dict[str, torch.Tensor]:
        if self._residual is not None and self._key == key:
            return self._residual
        if self._residual is None and self.path is not None and self.path.is_file():
            try:
                saved = checkpoint.load_tensors(self.path)
                if saved.metadata.get("key") == key:
                    self._key, self._residual = key, dict(saved.tensors)
                    logger.info("error feedback: carried on with the residual kept in %s", self.path)
                    return self._residual
                logger.info("error feedback: the residual in %s belongs to another run, codec or model; starting from zero", self.path)
            except Exception as exc:  # damaged: never trusted
                logger.warning("error feedback: ignoring %s (%s); starting from zero", self.path, exc)
        elif self._residual is not None:
            logger.info("error feedback: run, codec or model changed; residual reset")
        self._key, self._residual = key, {}
        return self._residual


def _key(run_id: str, codec: str, source: UpdateSource) -> str:
    shapes = ";".join(f"{n}:{d}:{s}" for n, (d, s) in source.specs.items())
    return hashlib.sha256(f"{run_id}|{codec}|{shapes}".encode()).hexdigest()


class ErrorFeedbackMod(ClientMod):
    """The client mod: encodes the update plus the residual for biased codecs, and keeps what the encoding left out
    once the server has accepted the update (any refusal or lost upload leaves the residual as it was)."""

    def __init__(self, workdir: Path | None) -> None:
        self.feedback = ErrorFeedback(workdir)
        self._buffer = bytearray()

    def send(self, upload: Upload, call_next: Send) -> str | None:
        codec = codecs.get(upload.task.update_encoding)
        if not codec.error_feedback or upload.blob is not None:
            return call_next(upload)
        blob = self.feedback.encode(codec, upload.result.update, upload.run_id, self._buffer)
        if isinstance(blob, bytearray):
            self._buffer = blob
        upload.blob = blob
        receipt = call_next(upload)
        self.feedback.accepted()
        return receipt
