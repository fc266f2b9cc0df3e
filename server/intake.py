"""Updates coming in: staged with a bounded number in memory, verified off the event loop, folded in order.

An update is admitted by its header, streamed into a staging buffer (the event loop only copies),
then hashed, decoded, checked and clipped on the worker pool, and only then counted and folded on
the single FIFO fold thread. A refusal at any step leaves the aggregate untouched and is counted
by reason for the next round record.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import Executor
from typing import AsyncIterator, Callable

import torch

from common import tensorcodec
from common.chunks import BlobAssembler, Manifest
from common.config import UpdateHeader
from common.errors import NotSelected, UpdateRejected, WireFormatError
from server.rounds import Round, reason_of
from server.validation import Expectation, check_tensors, clip_to_norm

logger = logging.getLogger("server.coordinator")


class UpdateIntake:
    def __init__(self, cpu: Executor, fold: Executor, max_staged: int, max_update_norm: float) -> None:
        self._cpu, self._fold = cpu, fold
        self._staging = asyncio.Semaphore(max_staged)  # bounds updates held in memory at once
        self._staging_limit = max_staged
        self._buffers: list[bytearray] = []  # staging buffers kept for the next uploads (at most max_staged)
        self._max_update_norm = max_update_norm
        self._refused: collections.Counter[str] = collections.Counter()

    def refuse(self, reason: str, name: str, message: str) -> None:
        """Count a refused request (by reason) for the next round record, and say why in the log."""
        self._refused[reason] += 1
        logger.warning("refused %s from client %s: %s", "call" if reason == "unauthenticated" else "update", name, message)

    @property
    def refusals(self) -> dict[str, int]:
        """Refusals counted since the last round record (not reset)."""
        return dict(self._refused)

    def take_refusals(self) -> dict[str, int]:
        counts = dict(self._refused)
        self._refused.clear()
        return counts

    async def receive(self, rnd: Round | None, current: Callable[[], Round | None], name: str, header: UpdateHeader,
                      data: AsyncIterator[bytes]) -> str:
        """Take one update for `rnd` (the round open when it arrived); `current` tells if that is still so."""
        try:
            if rnd is None:
                raise NotSelected("round_closed", f"no round is open for this update (it answers round {header.round}); discarded")
            rnd.admit(name, header)
        except UpdateRejected as exc:
            self.refuse(exc.reason, name, str(exc))
            raise
        rnd.uploading.add(name)
        loop = asyncio.get_running_loop()
        try:
            async with self._staging:
                buffer = self._take_buffer(header.total_bytes)
                using: asyncio.Future | None = None  # verification or fold that reads the buffer
                try:
                    assembler = BlobAssembler(Manifest(header.total_bytes, header.sha256), rnd.expectation.max_blob_bytes,
                                              hash_while_receiving=False, buffer=buffer)
                    async for piece in data:
                        if rnd.closed:
                            raise NotSelected("round_closed", f"round {rnd.number} closed while the update was arriving; discarded")
                        assembler.add(piece)
                    using = loop.run_in_executor(self._cpu, self._verify, assembler, rnd.expectation)
                    tensors, clipped = await using
                    if rnd.closed or current() is not rnd:
                        raise NotSelected("round_closed", f"round {rnd.number} closed before the update was checked; discarded")
                    rnd.accept(name, header, clipped)
                    using = loop.run_in_executor(self._fold, rnd.accumulator.add, tensors, header.num_examples)
                    rnd.close_if_due()
                    await using
                finally:
                    self._give_back(buffer, using)
        except (UpdateRejected, WireFormatError) as exc:
            self.refuse(reason_of(exc), name, str(exc))
            raise
        except asyncio.CancelledError:  # the client vanished mid-upload: the partial update is dropped whole
            self._refused["aborted"] += 1
            raise
        finally:
            rnd.uploading.discard(name)
            rnd.close_if_due()
        return f"round {rnd.number}: update of {header.num_examples} examples accepted"

    def _take_buffer(self, size: int) -> bytearray:
        fits = [b for b in self._buffers if len(b) >= size]
        if fits:
            self._buffers.remove(fits[0])
            return fits[0]
        return bytearray(size)

    def _give_back(self, buffer: bytearray, using: asyncio.Future | None) -> None:
        """Reuse the buffer only once nothing reads it: a cancelled upload's verify or fold may still be running."""
        if using is not None and not using.done():
            using.add_done_callback(lambda _: self._give_back(buffer, None))
            return
        if len(self._buffers) < self._staging_limit:
            self._buffers.append(buffer)

    def _verify(self, assembler: BlobAssembler, expect: Expectation) -> tuple[dict[str, torch.Tensor], bool]:
        """Off the event loop: verify the digest, decode (zero-copy), check, clip."""
        decoded = tensorcodec.decode(assembler.finish())
        norms = check_tensors(expect, decoded.tensors)
        _, clipped = clip_to_norm(decoded.tensors, expect.parameters, self._max_update_norm, norms)
        return decoded.tensors, clipped
