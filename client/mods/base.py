"""What a client mod sees and how mods compose.

A task goes in through every mod's `admit` (in order: any may refuse it before anything is downloaded), the local round
runs, and its result goes out through the mods' `send` as middleware: each gets the upload and the rest of the chain
(`call_next`), so it can change the upload on the way in, act on the receipt on the way back, or answer instead of the
rest (secure aggregation holds the update back for its own protocol). The innermost step uploads what the mods made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fedtl.common.config import TrainTask, UpdateHeader

if TYPE_CHECKING:  # mods declare their flags at parse time, before torch is imported
    from fedtl.client.local_round import LocalResult
    from fedtl.common.secagg.messages import SecAggMessage, SecAggStep

Blob = bytes | bytearray | memoryview


class Io(Protocol):
    """The session's way to the coordinator (client/connection.py), as mods may use it."""

    def upload(self, header: UpdateHeader, blob: Blob) -> str: ...
    def secagg(self, message: SecAggMessage) -> str: ...


@dataclass
class Upload:
    """One round's contribution on its way out."""

    task: TrainTask
    session_id: str
    run_id: str
    result: LocalResult
    io: Io
    blob: Blob | None = None  # the encoded update, once a mod has encoded it

    def header(self) -> UpdateHeader:
        from fedtl.common.tensorcodec import sha256_hex

        assert self.blob is not None, "encode before building the header"
        r = self.result
        return UpdateHeader(self.session_id, self.task.round, self.task.base_digest, r.num_examples, r.kind, len(self.blob),
                            sha256_hex(self.blob), r.metrics, self.task.update_encoding)


Send = Callable[[Upload], str | None]  # the rest of the chain: the server's receipt, or None when nothing was sent now


class ClientMod:
    """One concern around the local round. Every hook passes through by default; a mod overrides those it needs."""

    def connected(self, io: object) -> None:
        """A new connection to the coordinator (link pacing sets its rate here)."""

    def admit(self, task: TrainTask) -> None:
        """Before anything is downloaded: raise (PrivacyRefused, ...) to refuse the task."""

    def send(self, upload: Upload, call_next: Send) -> str | None:
        return call_next(upload)

    def step(self, step: SecAggStep, session_id: str, io: Io) -> bool:
        """A protocol instruction beyond the task (secure aggregation's phases): True when this mod answered it."""
        return False


def send_through(mods: Sequence[ClientMod], upload: Upload, last: Send) -> str | None:
    """Send `upload` through `mods` in order (the first is outermost), ending in `last`."""
    if not mods:
        return last(upload)
    first, rest = mods[0], mods[1:]
    return first.send(upload, lambda inner: send_through(rest, inner, last))
