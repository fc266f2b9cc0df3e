"""The helper's gRPC methods: each checks the caller's role, converts, delegates to HelperState, converts back.

Two roles, checked before anything else: a client deposits only under its own name with its own credential (the
token it uses with the coordinator: the helper reads the same tokens), and only the leader, with the leader token
(`--leader-token`), may bind, open and sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedtl.common.errors import ConfigError, FedError, Unauthenticated
from fedtl.common.validated_sum.proof import Shape
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc
from fedtl.server.auth import CLIENT_HEADER, TOKEN_HEADER, Authenticator
from fedtl.server.helper.state import HelperState
from fedtl.server.servicer import status_for
from fedtl.server.transport import SERVER_OPTIONS, server_credentials

logger = logging.getLogger("fedtl.helper")
SERVICE = "fedtl.v1.Helper"
T = TypeVar("T")


class HelperServicer(pb_grpc.HelperServicer):
    def __init__(self, state: HelperState, clients: Authenticator, leader_token: str | None) -> None:
        self.state, self.clients, self.leader_token = state, clients, leader_token

    async def Deposit(self, request: pb.HelperDeposit, context: grpc.aio.ServicerContext) -> pb.HelperAck:
        async with _statuses(context):
            metadata = dict(context.invocation_metadata() or ())
            self.clients.check(metadata.get(TOKEN_HEADER), metadata.get(CLIENT_HEADER))
            if metadata.get(CLIENT_HEADER) != request.client_name:
                raise Unauthenticated(f"a deposit for client {request.client_name[:64]!r} from {str(metadata.get(CLIENT_HEADER))[:64]!r}")
            self.state.deposit(request.round, request.client_name, bytes(request.seed))
        return pb.HelperAck()

    async def Bind(self, request: pb.HelperBind, context: grpc.aio.ServicerContext) -> pb.HelperBindings:
        async with _statuses(context):
            self._leader(context)
            shape = Shape(request.shape.coordinates, request.shape.bits, request.shape.bound)
            bindings = await _off_loop(self.state.bind, request.round, shape, list(request.clients))
        return pb.HelperBindings(bindings=bindings)

    async def Open(self, request: pb.HelperOpen, context: grpc.aio.ServicerContext) -> pb.HelperOpenings:
        async with _statuses(context):
            self._leader(context)
            openings = await _off_loop(self.state.open, request.round, bytes(request.challenge_seed), list(request.clients))
        return pb.HelperOpenings(openings=openings)

    async def Sum(self, request: pb.HelperSum, context: grpc.aio.ServicerContext) -> pb.HelperShareSum:
        async with _statuses(context):
            self._leader(context)
            values = await _off_loop(self.state.sum, request.round, list(request.clients), [int(w) for w in request.weights])
        logger.info("round %d: summed the shares of %d valid clients", request.round, len(request.clients))
        return pb.HelperShareSum(values=values)

    def _leader(self, context: grpc.aio.ServicerContext) -> None:
        given = str(dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, ""))
        if self.leader_token is not None and not hmac.compare_digest(given.encode(), f"Bearer {self.leader_token}".encode()):
            raise Unauthenticated("only the leader (with --leader-token) may ask this")


@contextlib.asynccontextmanager
async def _statuses(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Domain errors (and a shape that cannot be: ValueError) become the call's status, as the coordinator's servicer does."""
    try:
        yield
    except (FedError, ValueError) as exc:
        await context.abort(status_for(exc) if isinstance(exc, FedError) else grpc.StatusCode.INVALID_ARGUMENT, str(exc))


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    """The shares' arithmetic on a worker thread: the loop keeps answering deposits meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, work, *args)


async def serve(address: str, state: HelperState, clients: Authenticator, leader_token: str | None, tls: tuple[Path, Path] | None,
                stop: asyncio.Event, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until `stop` is set; `on_ready` gets the bound port (port 0 picks one)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_HelperServicer_to_server(HelperServicer(state, clients, leader_token), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(address, server_credentials(*tls, None)) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"--address {address}: cannot listen there ({exc})") from None
    await server.start()
    for service in ("", SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    logger.info("helper listening on %s:%d%s", address.rsplit(":", 1)[0], port, " with TLS" if tls else " WITHOUT TLS")
    if on_ready is not None:
        on_ready(port)
    await stop.wait()
    await server.stop(grace=1)
