"""Updates coming in: staged with a bounded number in memory, decoded and checked off the event loop, folded in order.

An update is admitted by its header, streamed into a staging buffer (the event loop only copies),
then hashed, decoded by its codec and checked on the worker pool, and only then counted and handed
to the round's aggregator on the single FIFO fold thread. A refusal at any step leaves the aggregate
untouched, is published as an event and counted by reason for the next round record, and comes back as the
outcome; what a refusal means for the client's place in the round is for the round (server/rounds.py) to say.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from fedtl.common import codecs
from fedtl.common.chunks import BlobAssembler, Manifest
from fedtl.common.config import UpdateHeader
from fedtl.common.errors import NotSelected, ServerStopping, UpdateRejected, WireFormatError
from fedtl.server.clock import Clock
from fedtl.server.events import EventBus, UpdateAccepted, UpdateRefused
from fedtl.server.progress import Piece, Progress, Stalled, guarded
from fedtl.server.refusals import reason_of
from fedtl.server.rounds import Round
from fedtl.server.settings.transport import Limits
from fedtl.server.validation import Expectation, Update, check_tensors


@dataclass(frozen=True)
class Accepted:
    detail: str  # the receipt's text


@dataclass(frozen=True)
class Refused:
    reason: str  # the short key counted in the round record
    error: Exception  # what the servicer turns into a status for the client


Outcome = Accepted | Refused


class UpdateIntake:
    def __init__(self, cpu: Executor, fold: Executor, limits: Limits, bus: EventBus, clock: Clock) -> None:
        self._cpu, self._fold = cpu, fold
        self._bus, self._clock, self._limits = bus, clock, limits
        self._staging = asyncio.Semaphore(limits.max_concurrent_uploads)  # bounds updates held in memory at once
        self._staging_limit = limits.max_concurrent_uploads
        self._buffers: list[bytearray] = []  # staging buffers kept for the next uploads (at most max_staged)
        self._refused: collections.Counter[str] = collections.Counter()

    def refuse(self, reason: str, name: str, message: str, round_number: int | None = None) -> None:
        """Count a refused request (by reason) for the next round record, and publish why."""
        self._refused[reason] += 1
        self._bus.publish(UpdateRefused(name, reason, message, round_number))

    @property
    def refusals(self) -> dict[str, int]:
        """Refusals counted since the last round record (not reset)."""
        return dict(self._refused)

    def take_refusals(self) -> dict[str, int]:
        counts = dict(self._refused)
        self._refused.clear()
        return counts

    async def receive(self, rnd: Round | None, name: str, header: UpdateHeader, data: AsyncIterator[Piece],
                      now: Callable[[], float]) -> Outcome:
        """Take one update for `rnd` (the round open when it arrived). Every refusal is counted and published here and
        comes back as the outcome: what it means for the client's place in the round is the round's to say."""
        try:
            if rnd is None:
                raise NotSelected("round_closed", f"no round is open for this update (it answers round {header.round}); discarded")
            phase = rnd.admit(name, header)
        except UpdateRejected as exc:
            return self.refused(exc, name, header.round)
        try:
            async with self._staging:
                buffer = self._take_buffer(header.total_bytes)
                using: asyncio.Future | None = None  # verification or fold that reads the buffer
                try:
                    assembler = BlobAssembler(Manifest(header.total_bytes, header.sha256), rnd.expectation.size_bounds(header.encoding)[1],
                                              hash_while_receiving=False, buffer=buffer)
                    progress = Progress(self._clock, self._limits.stall_timeout, self._limits.min_transfer_rate)
                    async for piece in guarded(data, progress, f"the update of client {name}"):
                        if phase.closed:
                            raise NotSelected("round_closed", f"round {rnd.number} closed while the update was arriving; discarded")
                        assembler.add(piece)
                    using = self._run(self._cpu, _verify, assembler, rnd.expectation, header.encoding)
                    update = await using
                    if phase.closed:
                        raise NotSelected("round_closed", f"round {rnd.number} closed before the update was checked; discarded")
                    rnd.accept(name, header, now())
                    using = self._run(self._fold, rnd.fold, name, update, float(header.num_examples))
                    try:
                        await using
                    except UpdateRejected:  # the rule refused it as it folded (an empty shard's): it never counted
                        rnd.unaccept(name, header)
                        raise
                finally:
                    self._give_back(buffer, using)
        except (UpdateRejected, WireFormatError, Stalled) as exc:
            return self.refused(exc, name, rnd.number)
        except asyncio.CancelledError:  # the client vanished mid-upload: the partial update is dropped whole
            self._refused["aborted"] += 1
            raise
        finally:
            rnd.settle(name, phase, now())
        m = header.metrics
        self._bus.publish(UpdateAccepted(rnd.number, name, header.num_examples, header.total_bytes,
                                         math.nan if m.train_loss is None else m.train_loss,
                                         math.nan if m.train_seconds is None else m.train_seconds))
        return Accepted(f"round {rnd.number}: update of {header.num_examples} examples accepted")

    def refused(self, exc: Exception, name: str, round_number: int | None) -> Refused:
        reason = reason_of(exc)
        self.refuse(reason, name, str(exc), round_number)
        return Refused(reason, exc)

    def _run(self, pool: Executor, *call: object) -> asyncio.Future:
        try:
            return asyncio.get_running_loop().run_in_executor(pool, *call)  # type: ignore[arg-type]
        except RuntimeError:  # the pools were shut down: the server is stopping
            raise ServerStopping("the server is stopping; this client reconnects and the run resumes when it is back") from None

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


def _verify(assembler: BlobAssembler, expect: Expectation, encoding: str) -> Update:
    """Off the event loop: verify the digest, decode with the update's codec (raw: zero-copy), check the tensors."""
    blob = assembler.finish()
    tensors, support = codecs.get(encoding).decode_update(blob, expect.specs)
    update = check_tensors(expect, tensors)
    update.support = support
    return update
