"""gRPC methods of the Federation service. Each one checks, converts, delegates to the coordinator, converts back.

Domain exceptions map to gRPC status codes in one table, with messages that tell the client what to do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from common import wire
from common.config import Finished
from common.errors import (
    CorruptError,
    DigestMismatch,
    FederationRefused,
    FedError,
    NotSelected,
    OversizeError,
    SessionSuperseded,
    TruncatedError,
    Unauthenticated,
    UnknownSession,
    UpdateRejected,
)
from protos import federation_pb2 as pb
from server.auth import CLIENT_HEADER, Authenticator
from server.coordinator import Coordinator, SegmentGone, reason_of
from server.transport import Malformed

logger = logging.getLogger(__name__)

# First match wins, so subclasses come before their bases.
STATUS_TABLE: list[tuple[type[Exception], grpc.StatusCode]] = [
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
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
_STATE_REASONS = {"stale_round", "wrong_base", "round_closed", "not_selected", "duplicate"}


def status_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, UpdateRejected) and exc.reason in _STATE_REASONS:
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, UpdateRejected) and exc.reason == "oversize":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    await context.abort(status_for(exc), str(exc))


class FederationServicer:
    def __init__(self, coordinator: Coordinator, auth: Authenticator) -> None:
        self._coordinator = coordinator
        self._auth = auth

    def _check_identity(self, context: grpc.aio.ServicerContext, name: str) -> None:
        """With per-client tokens, a caller may only act as the client its token belongs to."""
        bound = self._auth.bound_name(dict(context.invocation_metadata() or ()).get(CLIENT_HEADER))
        if bound is not None and bound != name:
            raise Unauthenticated(f"token of client {bound!r} used for client {name!r}")

    async def Connect(self, request: pb.Hello, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        try:
            if isinstance(request, Malformed):
                raise CorruptError(request.message)
            hello = wire.hello_from_proto(request)
            self._check_identity(context, hello.client_name)
            session = self._coordinator.connect(hello)
        except (FedError, SegmentGone) as exc:
            await _abort(context, exc)
        try:
            while True:
                item = await session.outbox.get()
                if isinstance(item, Exception):
                    await _abort(context, item)
                yield wire.instruction_to_proto(item)
                if isinstance(item, Finished):
                    return
        finally:
            self._coordinator.disconnect(session)

    async def DownloadModel(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        try:
            if isinstance(request, Malformed):
                raise CorruptError(request.message)
            segment = self._coordinator.segment(request.session_id, request.sha256)
        except (FedError, SegmentGone) as exc:
            await _abort(context, exc)
        sent = 0
        async with self._coordinator.sending:
            for message in segment.messages:  # pre-serialised Chunk bytes
                yield message
                sent += len(message)
        self._coordinator.downloaded(sent)

    async def UploadUpdate(self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext) -> pb.UploadReceipt:
        try:
            try:
                first = await anext(request_iterator, None)
                if isinstance(first, Malformed):
                    raise CorruptError(first.message)
                if not isinstance(first, pb.UpdateHeader):
                    raise CorruptError("an upload must start with an UpdateHeader message")
                header = wire.header_from_proto(first)
                self._check_identity(context, self._coordinator.session_name(header.session_id))
            except FedError as exc:  # refused before the coordinator saw it: count it here
                self._coordinator.rejected_upload(reason_of(exc), "?", str(exc))
                raise
            detail = await self._coordinator.receive_update(header, _payload(request_iterator))
        except (FedError, SegmentGone) as exc:
            await _abort(context, exc)
        except asyncio.CancelledError:
            logger.info("an upload was cut off mid-stream; nothing from it reached the aggregate")
            raise
        return pb.UploadReceipt(accepted=True, detail=detail)


async def _payload(request_iterator: AsyncIterator[object]) -> AsyncIterator[memoryview]:
    """The data slices of an upload (zero-copy views, see common/wire.py)."""
    async for message in request_iterator:
        if isinstance(message, Malformed):
            raise CorruptError(message.message)
        if not isinstance(message, memoryview):
            raise CorruptError("a second header arrived in the middle of an upload")
        yield message
