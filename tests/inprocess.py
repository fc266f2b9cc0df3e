"""A real gRPC server with a real coordinator inside the test process, for speaking the protocol by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from fedtl.common import chunks, tensorcodec, wire
from fedtl.common.config import PROTOCOL, UpdateHeader, UpdateKind
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc
from fedtl.server import transport
from fedtl.server.app import build
from fedtl.server.auth import Authenticator
from fedtl.server.clock import Clock
from fedtl.server.config import parse_args
from fedtl.server.coordinator import Coordinator
from fedtl.server.events import Sink
from fedtl.server.servicer import FederationServicer


@contextlib.asynccontextmanager
async def running_server(tmp_path: Path, extra: list[str] | None = None, auth: Authenticator | None = None, *,
                         clock: Clock | None = None, sinks: Sequence[Sink] = ()) -> AsyncIterator[tuple[Coordinator, int]]:
    cfg = parse_args(["--address", "127.0.0.1:0", "--run-dir", str(tmp_path / "run"), "--model", "tiny_cnn", "--weights", "none",
                      "--data", "synthetic:200", "--eval-every", "0", "--join-grace", "0", "--finish-grace", "1", *(extra or [])], env={})
    coordinator = build(cfg, clock=clock, sinks=sinks)
    auth = auth or Authenticator()
    server, port, _ = await transport.create_server(cfg.address, FederationServicer(coordinator, auth), auth=auth,
                                                    on_refused=coordinator.rejected_upload)
    task = asyncio.ensure_future(coordinator.run())
    try:
        yield coordinator, port
    finally:
        coordinator.request_stop("test over")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await server.stop(0)
        if coordinator.run_folder is not None:
            coordinator.run_folder.release()


class RawClient:
    """Speaks the protocol message by message, so tests can send anything, including garbage."""

    def __init__(self, port: int, name: str, metadata: list[tuple[str, str]] | None = None) -> None:
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.name = name
        self.metadata = metadata if metadata is not None else [("x-fedtl-client", name)]
        self.stream = None
        self.session_id = ""

    async def connect(self, protocol: str = PROTOCOL, **hello: object) -> pb.Instruction:
        """Join; `hello` sets more Hello fields (identity, partition_index, info=pb.ClientInfo(...))."""
        fields = {"protocol": protocol, "client_name": self.name, "partition_index": -1, **hello}
        self.stream = self.stub.Connect(pb.Hello(**fields), metadata=self.metadata)
        welcome = await self.stream.read()
        self.session_id = welcome.welcome.session_id
        return welcome

    async def next_instruction(self, timeout: float = 20) -> pb.Instruction:
        assert self.stream is not None
        return await asyncio.wait_for(self.stream.read(), timeout)

    async def download(self, digest: str) -> bytearray:
        stream = self.stub.DownloadModel(pb.DownloadRequest(session_id=self.session_id, sha256=digest), metadata=self.metadata)
        messages = [m async for m in stream]
        return wire.receive_blob(messages, None, 1 << 30)

    def upload_stalling(self, first: list) -> asyncio.Task:
        """Send these messages, then nothing more while keeping the stream open: a peer that stalls its upload."""
        raw = [m if isinstance(m, bytes) else m.SerializeToString() for m in first]
        forever = asyncio.Event()

        async def messages():  # type: ignore[no-untyped-def]
            for message in raw:
                yield message
            await forever.wait()

        upload = self.channel.stream_unary("/fedtl.v1.Federation/UploadUpdate", request_serializer=None,
                                           response_deserializer=pb.UploadReceipt.FromString)
        return asyncio.ensure_future(upload(messages(), metadata=self.metadata))

    async def upload_raw(self, messages: list) -> pb.UploadReceipt:
        """Upload with the synchronous stub, as the real client does (in a thread, off this event loop)."""

        raw = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]

        def send() -> pb.UploadReceipt:
            with grpc.insecure_channel(self.target) as channel:
                upload = channel.stream_unary("/fedtl.v1.Federation/UploadUpdate", request_serializer=None,
                                              response_deserializer=pb.UploadReceipt.FromString)
                return upload(iter(raw), metadata=self.metadata)

        return await asyncio.to_thread(send)

    def update_messages(self, task: pb.TrainTask, tensors: dict, num_examples: int = 10, **header_changes) -> list:  # type: ignore[no-untyped-def]
        blob = tensorcodec.encode(tensors)
        manifest = chunks.manifest_of(blob)
        fields = dict(session_id=self.session_id, round=task.round, base_digest=task.base_digest, num_examples=num_examples,
                      kind=UpdateKind.WEIGHT_DELTA, total_bytes=manifest.total_bytes, sha256=manifest.sha256)
        fields.update(header_changes)
        return list(wire.upload_messages(UpdateHeader(**fields), blob, 64))

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        await self.channel.close()
