"""What the Federation servicer talks to in a standing coordinator: sites' sessions and offers go to the lobby; downloads,
uploads and protocol messages go to the coordinator of the training job that runs now (one at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from fedtl.common.config import Hello, UpdateHeader
from fedtl.common.errors import NotSelected, UnknownSession
from fedtl.common.jobs import JobAnswer
from fedtl.server.coordinator import Coordinator
from fedtl.server.model_state import PreparedSegment
from fedtl.server.progress import Piece, Progress
from fedtl.server.registry import Session
from fedtl.server.standing.lobby import Lobby

logger = logging.getLogger(__name__)


class StandingFederation:
    def __init__(self, lobby: Lobby) -> None:
        self.lobby = lobby
        self.coordinator: Coordinator | None = None  # the running training job's
        self._idle = asyncio.Semaphore(1)

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
        return self._job().segment(session_id, digest)

    @contextlib.contextmanager
    def download_slot(self, session_id: str) -> Iterator[Progress]:
        with self._job().download_slot(session_id) as progress:
            yield progress

    @property
    def sending(self) -> asyncio.Semaphore:
        return self.coordinator.sending if self.coordinator is not None else self._idle

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
