"""What the Federation servicer talks to in a standing coordinator: sites' sessions and offers go to the lobby; downloads,
uploads and protocol messages go to the coordinator of the training job that runs now (one at a time), or an evaluation
job's model downloads to that job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from fedtl.common.config import Hello, UpdateHeader
from fedtl.common.errors import NotSelected, Overloaded, UnknownSession
from fedtl.common.jobs import JobAnswer
from fedtl.server.coordinator import Coordinator
from fedtl.server.model_state import PreparedSegment
from fedtl.server.progress import Piece, Progress
from fedtl.server.registry import Session
from fedtl.server.settings.transport import Limits
from fedtl.server.standing.evaluation import EvaluationJob
from fedtl.server.standing.lobby import Lobby
from fedtl.server.standing.running import StatisticsJob

logger = logging.getLogger(__name__)


class StandingFederation:
    def __init__(self, lobby: Lobby, limits: Limits) -> None:
        self.lobby = lobby
        self.limits = limits
        self.coordinator: Coordinator | None = None  # the running training job's
        self.answering: EvaluationJob | StatisticsJob | None = None  # a running job that sites answer (evaluation: with downloads)
        self._sending = asyncio.Semaphore(limits.max_concurrent_downloads)
        self._downloading: set[str] = set()

    def _job(self) -> Coordinator:
        if self.coordinator is None:
            raise UnknownSession("no job is running on this coordinator now; the session's job has ended")
        return self.coordinator

    # sites and offers
    def connect(self, hello: Hello, peer: str = "") -> Session:
        return self.lobby.connect(hello, peer)

    def disconnect(self, session: Session, reason: str = "") -> None:
        self.lobby.disconnect(session)

    def offer_site(self, offer_id: str) -> str:
        return self.lobby.offer_site(offer_id)

    def answer(self, answer: JobAnswer) -> None:
        self.lobby.answer(answer)

    # the running job
    def segment(self, session_id: str, digest: str) -> PreparedSegment:
        if isinstance(self.answering, EvaluationJob):  # the session is an open offer's id: only its site holds it
            self.lobby.offer_site(session_id)
            return self.answering.segment(digest)
        return self._job().segment(session_id, digest)

    @contextlib.contextmanager
    def download_slot(self, session_id: str) -> Iterator[Progress]:
        if self.coordinator is not None:
            with self.coordinator.download_slot(session_id) as progress:
                yield progress
            return
        if session_id in self._downloading:  # one at a time per offer, as per session in a run
            raise Overloaded("this site already has a download running; one at a time")
        self._downloading.add(session_id)
        try:
            yield Progress(self.lobby.clock, self.limits.stall_timeout, self.limits.min_transfer_rate)
        finally:
            self._downloading.discard(session_id)

    @property
    def sending(self) -> asyncio.Semaphore:
        return self.coordinator.sending if self.coordinator is not None else self._sending

    def downloaded(self, nbytes: int) -> None:
        if self.coordinator is not None:
            self.coordinator.downloaded(nbytes)

    def session_name(self, session_id: str) -> str:
        return self._job().session_name(session_id)

    def rejected_upload(self, reason: str, name: str, message: str) -> None:
        if self.coordinator is not None:
            self.coordinator.rejected_upload(reason, name, message)
        else:
            logger.warning("refused %s from %s: %s", reason, name, message)

    async def receive_update(self, header: UpdateHeader, data: AsyncIterator[Piece]) -> str:
        return await self._job().receive_update(header, data)

    def exchange(self, session_id: str, round_number: int, message: object) -> str:
        return self._job().exchange(session_id, round_number, message)

    def leave(self, session_id: str, reason: str) -> None:
        if self.coordinator is None:
            raise NotSelected("no_task", "no job is running; nothing to leave")
        self.coordinator.leave(session_id, reason)
