"""The update in the round's codec (TrainTask.update_encoding), into one upload buffer reused round after round."""

from __future__ import annotations

from fedtl.client.mods.base import ClientMod, Send, Upload
from fedtl.common import codecs


class EncodeMod(ClientMod):
    def __init__(self) -> None:
        self._buffer = bytearray()  # the previous update was sent (or given up) before this round began

    def send(self, upload: Upload, call_next: Send) -> str | None:
        if upload.blob is None:
            blob = codecs.get(upload.task.update_encoding).encode(upload.result.update, self._buffer)
            if isinstance(blob, bytearray):
                self._buffer = blob
            upload.blob = blob
        return call_next(upload)
