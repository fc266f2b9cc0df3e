"""The gRPC server: listening socket, TLS, token interceptor, health service, channel options in one place.

Transport settings were chosen by measurement (bench/transport.py, bench/README.md): gRPC's
default 4 MiB message limit is kept on purpose, since weights travel as <= 4 MiB chunks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedtl.common import wire
from fedtl.common.errors import ConfigError, Unauthenticated
from fedtl.protos import federation_pb2 as pb
from fedtl.server.auth import CLIENT_HEADER, TOKEN_HEADER, Authenticator, OperatorCredential

if TYPE_CHECKING:
    from fedtl.server.servicer import FederationServicer

logger = logging.getLogger(__name__)

SERVICE = "fedtl.v1.Federation"
OPERATOR_SERVICE = "fedtl.v1.Operator"  # a standing coordinator's (server/standing/service.py): the operator's token only

SERVER_OPTIONS = [
    # Ping idle connections so a client whose machine or network died is noticed within ~30 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Let clients ping us as often as every 5 s (their keepalive) without being cut off.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


class Malformed:
    """Stands in for a request that is not valid protobuf, so the servicer can answer INVALID_ARGUMENT
    (gRPC itself would answer INTERNAL, which reads as a server bug)."""

    def __init__(self, kind: str, error: Exception) -> None:
        self.message = f"malformed {kind} message: {error}"


def _tolerant(parser: Callable[[bytes], object], kind: str) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        try:
            return parser(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
            return Malformed(kind, exc)

    return parse


def federation_handler(servicer: FederationServicer) -> grpc.GenericRpcHandler:
    """Like the generated add_FederationServicer_to_server, except that DownloadModel yields
    pre-serialised Chunk bytes (serialised once per model version, shared by every download),
    and requests that fail to parse reach the servicer as `Malformed`."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Connect": grpc.unary_stream_rpc_method_handler(
            servicer.Connect, request_deserializer=_tolerant(pb.Hello.FromString, "Hello"), response_serializer=pb.Instruction.SerializeToString),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            servicer.DownloadModel, request_deserializer=_tolerant(pb.DownloadRequest.FromString, "DownloadRequest"), response_serializer=None),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.UploadUpdate, request_deserializer=_tolerant(wire.parse_upload, "UploadMessage"),
            response_serializer=pb.UploadReceipt.SerializeToString),
        "SecAgg": grpc.unary_unary_rpc_method_handler(
            servicer.SecAgg, request_deserializer=_tolerant(pb.SecAggMessage.FromString, "SecAggMessage"),
            response_serializer=pb.SecAggAck.SerializeToString),
        "Leave": grpc.unary_unary_rpc_method_handler(
            servicer.Leave, request_deserializer=_tolerant(pb.Goodbye.FromString, "Goodbye"),
            response_serializer=pb.GoodbyeAck.SerializeToString),
        "Answer": grpc.unary_unary_rpc_method_handler(
            servicer.Answer, request_deserializer=_tolerant(pb.JobAnswer.FromString, "JobAnswer"),
            response_serializer=pb.JobAnswerAck.SerializeToString),
    })


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every Federation call whose token does not check out, and every Operator call without the operator's
    credential, before any handler runs. The two roles never mix: the operator's token or certificate cannot join as a
    site. (A certificate is only known to the call's context: it is checked by a wrapper in front of the handler.)"""

    def __init__(self, auth: Authenticator, on_refused: Callable[[str, str, str], None] | None = None,
                 operator: OperatorCredential | None = None) -> None:
        self.auth = auth
        self.on_refused = on_refused  # (reason, client, message): counted in the round log
        self.operator = operator  # a standing coordinator's operators (None: no Operator service)

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        authorization = metadata.get(TOKEN_HEADER)
        if details.method.startswith(f"/{OPERATOR_SERVICE}/"):
            operator = self.operator or OperatorCredential()
            return _checked(handler, lambda context: operator.refusal(authorization, _cert_names(context)))
        if not details.method.startswith(f"/{SERVICE}/"):
            return handler  # health checks stay open
        try:
            if self.operator is not None and (refusal := self.operator.site_refusal(authorization, [])):
                raise Unauthenticated(refusal)
            self.auth.check(authorization, metadata.get(CLIENT_HEADER))
        except Unauthenticated as exc:
            if self.on_refused is not None:
                self.on_refused("unauthenticated", str(metadata.get(CLIENT_HEADER)), f"{details.method.rsplit('/', 1)[-1]}: {exc}")
            return _deny(handler, str(exc))
        if self.operator is not None and self.operator.cert_name:
            operator = self.operator
            return _checked(handler, lambda context: operator.site_refusal(None, _cert_names(context)))
        return handler


def _cert_names(context: grpc.aio.ServicerContext) -> list[str]:
    return [n.decode(errors="replace") for n in (context.auth_context() or {}).get("x509_common_name", [])]


def _checked(handler: grpc.RpcMethodHandler, refusal: Callable[[grpc.aio.ServicerContext], str]) -> grpc.RpcMethodHandler:
    """`handler`, with `refusal(context)` checked before it runs (a message: UNAUTHENTICATED)."""
    async def first(context: grpc.aio.ServicerContext) -> None:
        if message := refusal(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def unary_unary(request, context):  # type: ignore[no-untyped-def]
        await first(context)
        return await handler.unary_unary(request, context)

    async def stream_unary(requests, context):  # type: ignore[no-untyped-def]
        await first(context)
        return await handler.stream_unary(requests, context)

    async def unary_stream(request, context):  # type: ignore[no-untyped-def]
        await first(context)
        async for response in handler.unary_stream(request, context):
            yield response

    async def unary_written(request, context):  # type: ignore[no-untyped-def]  # a handler that writes (DownloadModel)
        await first(context)
        await handler.unary_stream(request, context)

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.response_streaming and not handler.request_streaming:
        streams = unary_stream if inspect.isasyncgenfunction(handler.unary_stream) else unary_written
        return grpc.unary_stream_rpc_method_handler(streams, request_deserializer=des, response_serializer=ser)
    if handler.request_streaming and not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(stream_unary, request_deserializer=des, response_serializer=ser)
    if not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=des, response_serializer=ser)
    raise TypeError("no streaming-both method is guarded")


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def unary(request, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    des = handler.request_deserializer
    if handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler if handler.request_streaming else grpc.unary_stream_rpc_method_handler
        return make(streaming, request_deserializer=des)
    make = grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
    return make(unary, request_deserializer=des)


async def create_server(
    address: str,
    servicer: FederationServicer,
    *,
    credentials: grpc.ServerCredentials | None = None,
    auth: Authenticator | None = None,
    compression: str = "none",
    on_refused: Callable[[str, str, str], None] | None = None,
    operator: tuple[OperatorCredential, grpc.GenericRpcHandler] | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start serving; return (server, bound port, health servicer). Port 0 picks a free port. `operator`: a standing
    coordinator's operator token and Operator service."""
    guarded = (auth is not None and auth.enabled) or operator is not None
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(auth or Authenticator(), on_refused, operator[0] if operator else None)] if guarded else [],
        options=SERVER_OPTIONS,
        compression=grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression,
    )
    server.add_generic_rpc_handlers((federation_handler(servicer), *((operator[1],) if operator else ())))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"--address {address}: cannot listen there ({exc}); is the port in use or the host not local?") from None
    if port == 0:
        raise ConfigError(f"--address {address}: cannot listen there; is the port in use or the host not local?")
    await server.start()
    for service in ("", SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def mark_not_serving(health_servicer: health.aio.HealthServicer) -> None:
    for service in ("", SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
