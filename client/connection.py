"""The client's gRPC channel: TLS, token metadata, keepalive, chunked transfers, RpcError -> domain errors.

The only client module that imports grpc or protos.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from fedtl.client.config import ClientConfig
from fedtl.client.diagnose import Finding, probe
from fedtl.common import chunks, faults, wire, wire_jobs, wire_secagg
from fedtl.common.config import Hello, SegmentRef, UpdateHeader
from fedtl.common.errors import (
    CorruptError,
    FederationRefused,
    FedError,
    NothingListening,
    ServerUnavailable,
    SessionSuperseded,
    Unauthenticated,
    UnknownSession,
    UpdateRejected,
)
from fedtl.common.jobs import JobAnswer, SiteInstruction
from fedtl.common.link import TokenBucket, paced
from fedtl.common.progress import Progress
from fedtl.common.secagg.messages import SecAggMessage
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 30_000),  # notice a dead server or network within ~40 s
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),  # reconnection is the session loop's job (client/app.py)
]

CONNECT_TIMEOUT = 20.0  # seconds for the channel to come up before one attempt counts as failed
ANSWER_TIMEOUT = 30.0  # seconds to answer a job offer (a statistics job's counts ride in the answer)
LEAVE_TIMEOUT = 3.0  # seconds a leaving client waits to say why: no longer holds up a Ctrl-C


class TlsError(FedError):
    """TLS cannot work as configured (wrong CA or name, TLS on one side only, a missing client certificate).

    `certain` is False when the evidence could also be a server starting or stopping (it completed a handshake,
    then hung up): the client gives up only when it repeats."""

    def __init__(self, message: str, certain: bool = True) -> None:
        super().__init__(message)
        self.certain = certain


class Unresolvable(ServerUnavailable):
    """The server's host name does not resolve: a typo, or a name service that is not up yet."""


class Connection:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        options = list(CHANNEL_OPTIONS)
        if cfg.tls_server_name:
            options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression
        if cfg.ca_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=cfg.ca_cert.read_bytes(),
                private_key=cfg.tls_key.read_bytes() if cfg.tls_key else None,
                certificate_chain=cfg.tls_cert.read_bytes() if cfg.tls_cert else None,
            )
            self.channel = grpc.secure_channel(cfg.server, creds, options=options, compression=compression)
        else:
            self.channel = grpc.insecure_channel(cfg.server, options=options, compression=compression)
        self.stub = pb_grpc.FederationStub(self.channel)
        # Weights move through hand-framed messages (common/wire.py): a view per received chunk,
        # pre-serialised bytes per sent chunk.
        self._download = self.channel.unary_stream(
            "/fedtl.v1.Federation/DownloadModel", request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=wire.parse_chunk)
        self._upload = self.channel.stream_unary(
            "/fedtl.v1.Federation/UploadUpdate", request_serializer=None, response_deserializer=pb.UploadReceipt.FromString)
        self._up_link: TokenBucket | None = None  # set by pace(): a simulated slow link (client/mods/pacing.py)
        self._down_link: TokenBucket | None = None
        self.metadata: list[tuple[str, str]] = [("x-fedtl-client", cfg.name)]
        if cfg.token:
            self.metadata.append(("authorization", f"Bearer {cfg.token}"))

    def close(self) -> None:
        self.channel.close()

    def pace(self, up: TokenBucket | None, down: TokenBucket | None) -> None:
        """Release every transfer's bytes no faster than these buckets allow."""
        self._up_link, self._down_link = up, down

    def wait_ready(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """One fail-fast call of the standard health service (no token needed): unlike waiting for the
        channel, it surfaces the reason a connection fails (a TLS handshake refused, a wrong name)."""
        try:
            HealthStub(self.channel).Check(HealthCheckRequest(), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServerUnavailable(f"no answer from {self.cfg.server} within {timeout:g}s") from None
            raise self._translate(exc, "connection") from None

    def connect(self, hello: Hello) -> Generator[SiteInstruction, None, None]:
        """Open the session stream; yields Welcome, then TrainTasks, then Finished (a standing coordinator: an offer
        before each job, and Finished(standing) after it)."""
        try:
            for message in self.stub.Connect(wire.hello_to_proto(hello), metadata=self.metadata, wait_for_ready=False):
                yield wire.instruction_from_proto(message)
        except grpc.RpcError as exc:
            raise self._translate(exc, "session") from None

    def download(self, session_id: str, ref: SegmentRef, buffer: bytearray | None = None) -> memoryview:
        request = pb.DownloadRequest(session_id=session_id, sha256=ref.sha256)
        try:
            stream = _counted(paced(self._download(request, metadata=self.metadata), self._down_link), Progress(f"downloading {ref.name} weights", ref.total_bytes, "B"))
            return wire.receive_blob(_watch(stream, "download"), chunks.Manifest(ref.total_bytes, ref.sha256), ref.total_bytes, buffer)
        except grpc.RpcError as exc:
            raise self._translate(exc, "download") from None

    def upload(self, header: UpdateHeader, blob: bytes | bytearray | memoryview) -> str:
        try:
            messages = paced(wire.upload_messages(header, blob, self.cfg.chunk_bytes), self._up_link)
            receipt = self._upload(_watch(messages, "upload"), metadata=self.metadata)
            return receipt.detail
        except grpc.RpcError as exc:
            raise self._translate(exc, "upload") from None

    def secagg(self, message: SecAggMessage) -> str:
        """A secure-aggregation answer (keys, shares, tags, reveals or a withdrawal)."""
        try:
            return self.stub.SecAgg(wire_secagg.message_to_proto(message), metadata=self.metadata, timeout=CONNECT_TIMEOUT * 3).detail
        except grpc.RpcError as exc:
            raise self._translate(exc, "secagg") from None

    def leave(self, session_id: str, reason: str) -> None:
        """Tell the server why this client goes (its log shows it; a round stops waiting for it). Best effort: a server
        that cannot be told loses nothing, since closing the session says the rest."""
        try:
            self.stub.Leave(pb.Goodbye(session_id=session_id, reason=reason[:300]), metadata=self.metadata, timeout=LEAVE_TIMEOUT)
        except grpc.RpcError as exc:
            logger.debug("could not tell the server why this client leaves: %s", exc.code())

    def answer(self, answer: JobAnswer) -> None:
        """A standing coordinator's job offer, accepted (with a statistics job's counts) or refused with the rule."""
        try:
            self.stub.Answer(wire_jobs.answer_to_proto(answer), metadata=self.metadata, timeout=ANSWER_TIMEOUT)
        except grpc.RpcError as exc:
            raise self._translate(exc, "answer") from None

    def _translate(self, exc: grpc.RpcError, what: str) -> FedError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return self._unavailable(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and what in ("session", "connection"):
            return ServerUnavailable(f"the server is busy ({details[:200]})")  # at its client or join-rate limit: retry later
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated(f"server refused the {what}: {details}")
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return SessionSuperseded(details)
        if code == grpc.StatusCode.ABORTED:
            return UnknownSession(details)
        if code == grpc.StatusCode.CANCELLED:
            return ServerUnavailable(f"{what} cancelled: {details}")
        if what == "session" and code == grpc.StatusCode.FAILED_PRECONDITION:
            return FederationRefused(details)
        if what in ("upload", "secagg") and code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.DATA_LOSS, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return UpdateRejected(code.name.lower(), details)
        if what == "download" and code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return UpdateRejected("model_gone", details)  # the round moved on without this client
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            return ServerUnavailable(f"{what} failed: {code.name} {details}")
        return CorruptError(f"{what} failed: {code.name} {details}")


    def _unavailable(self, details: str) -> FedError:
        """Tell apart what retrying cures (the server is down or restarting) from what it cannot (a name that does not
        resolve, TLS on one side only, a missing or refused client certificate), naming the flag to fix."""
        where, lowered, cfg = self.cfg.server, details.lower(), self.cfg
        if "errors resolving" in lowered or "domain name" in lowered or "dns" in lowered:
            return Unresolvable(f"cannot resolve the host in --server {where}: check the name ({details[:200]})")
        if "wrong_version_number" in lowered and cfg.ca_cert is not None:
            return TlsError(f"the server at {where} does not use TLS (it answered in plaintext): start this client without "
                            "--ca-cert/--tls-cert, or the server with --tls-cert/--tls-key")
        if any(word in lowered for word in ("socket closed", "connection reset", "reset by peer", "broken pipe")):
            # a peer that hangs up: a TLS server this client does not speak to, or one that is starting or stopping (a
            # container's port proxy accepts and resets while the server restarts): the probe tells which
            host, _, port = where.rpartition(":")
            finding = probe(host.strip("[]"), int(port))
            if finding in (Finding.TLS, Finding.CLIENT_CERT_REQUIRED) and cfg.ca_cert is None:
                return TlsError(f"the server at {where} uses TLS and this client does not: start it with --ca-cert CA.pem "
                                "(the CA that signed the server's certificate)")
            if finding is Finding.CLIENT_CERT_REQUIRED and cfg.tls_cert is None:
                return TlsError(f"the server at {where} requires a client certificate (mutual TLS): start this client with "
                                "--tls-cert/--tls-key (python -m server.certs --client NAME makes one)", certain=False)
            if finding is Finding.CLIENT_CERT_REQUIRED:
                return TlsError(f"the server at {where} refused this client's certificate (--tls-cert): it must be signed by "
                                "the CA the server trusts (--tls-client-ca) and not be expired", certain=False)
            return ServerUnavailable(f"the connection to {where} was reset (a server starting or stopping?)")
        if any(word in lowered for word in ("handshake", "ssl", "certificate", "tls", "verification")):
            verified = any(word in lowered for word in ("verify failed", "verification", "self signed", "self-signed", "unknown ca",
                                                        "hostname", "peer name", "subject alt"))
            return TlsError(
                f"TLS handshake with {where} failed ({details[:300]}). Check that --ca-cert is the CA that signed the server's "
                "certificate, that the host in --server (or --tls-server-name) is in that certificate, and, if the "
                "server requires client certificates, --tls-cert/--tls-key.", certain=verified)  # only a verified mismatch is fatal at once
        if "connection refused" in lowered:
            return NothingListening(f"nothing answers at {where} (connection refused)")
        return ServerUnavailable(f"server {where} is unreachable ({details[:300]})")


def _watch(messages: Iterator, point: str) -> Iterator:
    """Pass messages through; the fault-injection point sits after the second one (mid-stream)."""
    for index, message in enumerate(messages):
        if index == 2:
            faults.hit(point)
        yield message


def _counted(messages: Iterator, progress: Progress) -> Iterator:
    """Pass messages through, counting the bytes of the chunks for the progress display."""
    moved = 0
    for message in messages:
        if isinstance(message, (bytes, bytearray, memoryview)):
            moved += len(message)
            progress.update(moved)
        yield message
    progress.close()


def deposit_to_helper(cfg: ClientConfig, round_number: int, seed: bytes) -> None:
    """Give the helper (--helper, the one this site trusts) the seed of this round's share. Its own channel, closed after:
    one small call a round. Raises ServerUnavailable (not reached) or UpdateRejected (refused)."""
    if cfg.helper_ca_cert is not None:
        channel = grpc.secure_channel(cfg.helper, grpc.ssl_channel_credentials(root_certificates=cfg.helper_ca_cert.read_bytes()))
    else:
        channel = grpc.insecure_channel(cfg.helper)
    metadata = [("x-fedtl-client", cfg.name), *([("authorization", f"Bearer {cfg.token}")] if cfg.token else [])]
    try:
        pb_grpc.HelperStub(channel).Deposit(pb.HelperDeposit(round=round_number, client_name=cfg.name, seed=seed), metadata=metadata,
                                            timeout=CONNECT_TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ServerUnavailable(f"the helper at {cfg.helper} does not answer ({exc.details()})") from None
        raise UpdateRejected(code.name.lower(), f"the helper at {cfg.helper} refused: {exc.details()}") from None
    finally:
        channel.close()
