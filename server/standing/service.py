"""gRPC methods of the Operator service (submit, ls, logs, stop) and the standing coordinator's serving.

The transport's interceptor admits only the operator's token here (server/transport.py); each method converts and
delegates to the Standing loop (server/standing/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

import grpc

from fedtl.common import checkpoint, wire_jobs
from fedtl.common.errors import ConfigError, FedError
from fedtl.protos import federation_pb2 as pb
from fedtl.server import app, transport
from fedtl.server.auth import Authenticator, OperatorCredential
from fedtl.server.config import ServerConfig
from fedtl.server.run_folder import RunFolder
from fedtl.server.servicer import FederationServicer
from fedtl.server.standing.runner import Standing, UnknownJob

logger = logging.getLogger(__name__)
OPERATOR_SERVICE = transport.OPERATOR_SERVICE


@contextlib.asynccontextmanager
async def _statuses(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except UnknownJob as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except FedError as exc:  # a job that cannot run as given (ConfigError), a stop of an ended one
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class OperatorServicer:
    def __init__(self, standing: Standing) -> None:
        self._standing = standing

    async def Submit(self, request: pb.JobSubmission, context: grpc.aio.ServicerContext) -> pb.JobStatus:
        async with _statuses(context):
            flags, toml = wire_jobs.submission_from_proto(request)
            job = self._standing.submit(flags, toml)
            return wire_jobs.status_to_proto(self._standing.status(job.id))
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    async def List(self, request: pb.JobListRequest, context: grpc.aio.ServicerContext) -> pb.JobList:
        return pb.JobList(jobs=[wire_jobs.status_to_proto(s) for s in self._standing.statuses()])

    async def Logs(self, request: pb.JobLogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JobLogLine]:
        async with _statuses(context):
            async for line in self._standing.log_lines(request.job_id[:64], request.follow):
                yield pb.JobLogLine(line=line)

    async def Stop(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.JobStatus:
        async with _statuses(context):
            return wire_jobs.status_to_proto(self._standing.stop(request.job_id[:64]))
        raise AssertionError("unreachable")  # pragma: no cover - abort raises


def operator_handler(servicer: OperatorServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(OPERATOR_SERVICE, {
        "Submit": grpc.unary_unary_rpc_method_handler(servicer.Submit, request_deserializer=pb.JobSubmission.FromString,
                                                      response_serializer=pb.JobStatus.SerializeToString),
        "List": grpc.unary_unary_rpc_method_handler(servicer.List, request_deserializer=pb.JobListRequest.FromString,
                                                    response_serializer=pb.JobList.SerializeToString),
        "Logs": grpc.unary_stream_rpc_method_handler(servicer.Logs, request_deserializer=pb.JobLogsRequest.FromString,
                                                     response_serializer=pb.JobLogLine.SerializeToString),
        "Stop": grpc.unary_unary_rpc_method_handler(servicer.Stop, request_deserializer=pb.JobRef.FromString,
                                                    response_serializer=pb.JobStatus.SerializeToString),
    })


async def serve(cfg: ServerConfig, argv: list[str]) -> int:
    """One gRPC server for the whole life of the standing coordinator: sites, operators, health."""
    assert cfg.standing is not None
    folder = RunFolder(cfg.run_dir)
    folder.lock()  # one standing coordinator per folder: its jobs' queue is its own
    try:
        return await _serve(cfg, argv)
    finally:
        folder.release()


async def _serve(cfg: ServerConfig, argv: list[str]) -> int:
    assert cfg.standing is not None
    standing = Standing(cfg, argv, dict(os.environ))
    auth = Authenticator.from_files(cfg.token, cfg.tokens_file)
    credentials = transport.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert and cfg.tls_key else None
    server, port, health = await transport.create_server(
        cfg.address, FederationServicer(standing.federation, auth), credentials=credentials, auth=auth, compression=cfg.compression,
        operator=(OperatorCredential(cfg.standing.operator_token, cfg.standing.operator_cert_name), operator_handler(OperatorServicer(standing))))
    host = cfg.address.rpartition(":")[0]
    standing.listen_address = f"{host}:{port}"
    if credentials is None:
        logger.warning("INSECURE: listening on %s:%d without TLS: the operator token and model weights cross the network in the "
                       "clear. Use --tls-cert/--tls-key (python -m server.certs makes them) beyond localhost.", host, port)
    checkpoint.write_json_atomic(cfg.run_dir / "server.json", {"port": port, "address": f"{host}:{port}", "pid": os.getpid(),
                                                             "standing": True})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, standing.request_stop, signal.Signals(sig).name)
    try:
        return await standing.run()
    finally:
        await transport.mark_not_serving(health)
        await server.stop(grace=2.0)
        standing.close_observers()


def run_standing(cfg: ServerConfig, argv: list[str]) -> int:
    if cfg.tls_cert is None and not app.is_loopback(cfg.address) and not cfg.allow_insecure:
        raise ConfigError(f"--address {cfg.address} is reachable from other machines, and without TLS anyone on the network can read "
                          "the operator's token and the model weights. Add --tls-cert/--tls-key, listen on 127.0.0.1, or pass "
                          "--allow-insecure on a trusted network.")
    return asyncio.run(serve(cfg, argv))
