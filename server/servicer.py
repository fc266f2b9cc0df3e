"""gRPC methods of the Federation service. Each one checks, converts, delegates to the coordinator, converts back.

Domain exceptions map to gRPC status codes in one table, with messages that tell the client what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc

from fedtl.common import wire, wire_jobs, wire_secagg
from fedtl.common.config import Finished, UpdateHeader
from fedtl.common.errors import (
    CorruptError,
    DigestMismatch,
    FederationRefused,
    FedError,
    NotSelected,
    Overloaded,
    OversizeError,
    ServerStopping,
    SessionSuperseded,
    TruncatedError,
    Unauthenticated,
    UnknownSession,
    UpdateRejected,
)
from fedtl.protos import federation_pb2 as pb
from fedtl.server.auth import CLIENT_HEADER, Authenticator
from fedtl.server.coordinator import Coordinator
from fedtl.server.progress import Stalled, within
from fedtl.server.refusals import STATE_REASONS, reason_of
from fedtl.server.registry import Session
from fedtl.server.serving import SegmentGone
from fedtl.server.standing.federation import StandingFederation
from fedtl.server.transport import Malformed

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LEAVE_REASON = 300  # characters of a client's reason for leaving (docs/protocol.md)

# First match wins, so subclasses come before their bases.
STATUS_TABLE: list[tuple[type[Exception], grpc.StatusCode]] = [
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),  # retry later
    (ServerStopping, grpc.StatusCode.UNAVAILABLE),  # reconnect once it is back
    (Stalled, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnknownSession, grpc.StatusCode.ABORTED),  # reconnect, then carry on
    (SessionSuperseded, grpc.StatusCode.ALREADY_EXISTS),
    (FederationRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (NotSelected, grpc.StatusCode.FAILED_PRECONDITION),
    (SegmentGone, grpc.StatusCode.NOT_FOUND),
    (DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (TruncatedError, grpc.StatusCode.DATA_LOSS),
    (OversizeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CorruptError, grpc.StatusCode.INVALID_ARGUMENT),
    (UpdateRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (FedError, grpc.StatusCode.INVALID_ARGUMENT),
]


def status_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, UpdateRejected) and exc.reason in STATE_REASONS:
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, UpdateRejected) and exc.reason == "oversize":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _parsed(request: T) -> T:
    if isinstance(request, Malformed):
        raise CorruptError(request.message)
    return request


@contextlib.asynccontextmanager
async def _statuses(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Domain errors raised inside become the call's status (the table above), with the error's message."""
    try:
        yield
    except (FedError, SegmentGone) as exc:
        await context.abort(status_for(exc), str(exc))


class FederationServicer:
    """`coordinator` is a run's Coordinator, or a standing federation's router to the running job
    (server/standing/federation.py), which also takes the sites' answers to job offers."""

    def __init__(self, coordinator: Coordinator | StandingFederation, auth: Authenticator) -> None:
        self._coordinator = coordinator
        self._auth = auth

    def _check_identity(self, context: grpc.aio.ServicerContext, name: str) -> None:
        """A caller may only act as the client its credential names: its per-client token, its certificate (mTLS)."""
        bound = self._auth.bound_name(dict(context.invocation_metadata() or ()).get(CLIENT_HEADER))
        if bound is not None and bound != name:
            raise Unauthenticated(f"token of client {bound!r} used for client {name!r}")
        names = [n.decode(errors="replace") for n in (context.auth_context() or {}).get("x509_common_name", [])]
        if names and name not in names:
            raise Unauthenticated(f"this client's certificate is for {names[0]!r}, not {name!r}: --name must match it")

    async def Connect(self, request: pb.Hello, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        async with _statuses(context):
            hello = wire.hello_from_proto(_parsed(request))
            self._check_identity(context, hello.client_name)
            session = self._coordinator.connect(hello, context.peer())
        try:
            async with _statuses(context):
                async for instruction in _instructions(session):
                    yield instruction
        finally:
            self._coordinator.disconnect(session)

    async def DownloadModel(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext) -> None:
        async with _statuses(context):
            session_id, digest = wire.download_from_proto(_parsed(request))
            segment = self._coordinator.segment(session_id, digest)
            with self._coordinator.download_slot(session_id) as progress:
                async with self._coordinator.sending:
                    for message in segment.messages:  # pre-serialised Chunk bytes, each written by its deadline
                        await within(progress, context.write(message), "the model download")
                        progress.moved += len(message)
        self._coordinator.downloaded(progress.moved)

    async def UploadUpdate(self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext) -> pb.UploadReceipt:
        async with _statuses(context):
            header = await self._upload_header(request_iterator, context)
            try:
                detail = await self._coordinator.receive_update(header, _payload(request_iterator))
            except asyncio.CancelledError:
                logger.info("an upload was cut off mid-stream; nothing from it reached the aggregate")
                raise
        return pb.UploadReceipt(accepted=True, detail=detail)

    async def SecAgg(self, request: pb.SecAggMessage, context: grpc.aio.ServicerContext) -> pb.SecAggAck:
        async with _statuses(context):
            message = wire_secagg.message_from_proto(_parsed(request))
            self._check_identity(context, self._coordinator.session_name(message.session_id))
            detail = self._coordinator.exchange(message.session_id, message.round, message)
        return pb.SecAggAck(detail=detail)

    async def Leave(self, request: pb.Goodbye, context: grpc.aio.ServicerContext) -> pb.GoodbyeAck:
        async with _statuses(context):
            goodbye = _parsed(request)
            if len(goodbye.reason) > MAX_LEAVE_REASON:
                raise CorruptError(f"a leave reason is at most {MAX_LEAVE_REASON} characters, got {len(goodbye.reason)}")
            self._check_identity(context, self._coordinator.session_name(goodbye.session_id))
            self._coordinator.leave(goodbye.session_id, goodbye.reason)
        return pb.GoodbyeAck()

    async def Answer(self, request: pb.JobAnswer, context: grpc.aio.ServicerContext) -> pb.JobAnswerAck:
        async with _statuses(context):
            answer = wire_jobs.answer_from_proto(_parsed(request))
            if not isinstance(self._coordinator, StandingFederation):
                raise NotSelected("no_offer", "this coordinator runs one job and offers none (a standing one does: docs/jobs.md)")
            self._check_identity(context, self._coordinator.offer_site(answer.offer_id))
            self._coordinator.answer(answer)
        return pb.JobAnswerAck()

    async def _upload_header(self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext) -> UpdateHeader:
        """The first message, checked; a refusal here is counted, since the coordinator never saw the update."""
        try:
            first = _parsed(await anext(request_iterator, None))
            if not isinstance(first, pb.UpdateHeader):
                raise CorruptError("an upload must start with an UpdateHeader message")
            header = wire.header_from_proto(first)
            self._check_identity(context, self._coordinator.session_name(header.session_id))
            return header
        except FedError as exc:
            self._coordinator.rejected_upload(reason_of(exc), "?", str(exc))
            raise


async def _instructions(session: Session) -> AsyncIterator[pb.Instruction]:
    """The session's outbox as protobuf, until Finished; an exception put there ends the stream with its status."""
    while True:
        item = await session.outbox.get()
        if isinstance(item, Exception):
            raise item
        yield wire.instruction_to_proto(item)
        if isinstance(item, Finished) and not item.standing:  # a standing federation's job ended: the session goes on
            return


async def _payload(request_iterator: AsyncIterator[object]) -> AsyncIterator[memoryview]:
    """The data slices of an upload (zero-copy views, see common/wire.py)."""
    async for message in request_iterator:
        message = _parsed(message)
        if not isinstance(message, memoryview):
            raise CorruptError("a second header arrived in the middle of an upload")
        yield message
