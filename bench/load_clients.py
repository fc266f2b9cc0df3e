"""Many lightweight federation clients in one process: real gRPC connections speaking the real protocol,
but no training (each update is small seeded noise). For load tests and the scale benchmark. Sessions may share
TCP connections (`--per-connection K`: K sessions multiplexed as HTTP/2 streams on one connection), so a few
driver processes can hold 10,000 sessions over 1,000 connections.

`python -m bench.load_clients --server 127.0.0.1:50051 --clients 200`
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

import grpc
import torch

from fedtl.common import chunks, tensorcodec, wire
from fedtl.common.config import Finished, Hello, TrainTask, UpdateHeader, UpdateKind, Welcome
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc

# Own TCP connection per client (gRPC would otherwise share one between channels to the same target).
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.keepalive_time_ms", 30_000)]


@dataclass
class Sent:
    round: int
    num_examples: int
    update: dict[str, torch.Tensor]


@dataclass
class LightClient:
    target: str
    name: str
    index: int
    keep_updates: bool = True
    sent: list[Sent] = field(default_factory=list)
    refused: int = 0
    finished: str = ""
    shared: grpc.aio.Channel | None = None  # a connection shared with other sessions; None: one of its own
    errors: collections.Counter = field(default_factory=collections.Counter)  # failed sessions by status (each reconnected)
    _channel: grpc.aio.Channel | None = None

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Join (again, after a pause, while the server is at its join-rate limit, as the real client does), then serve tasks."""
        for attempt in range(100):
            try:
                return await self._session(ready)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    if self.shared is None:
                        raise
                    # one session of a shared connection: it reconnects, as a real client does, and the others go on
                    self.errors[f"{exc.code().name}: {exc.details()}"] += 1
                    if self.finished or self.shared.get_state() == grpc.ChannelConnectivity.SHUTDOWN:
                        return None
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)) * (0.5 + random.random()))

    async def _session(self, ready: asyncio.Event | None) -> None:
        if self.shared is not None:
            self._channel = self.shared
            return await self._serve(self.shared, ready)
        async with grpc.aio.insecure_channel(self.target, options=OPTIONS) as channel:
            self._channel = channel
            return await self._serve(channel, ready)

    async def _serve(self, channel: grpc.aio.Channel, ready: asyncio.Event | None) -> None:
        stub = pb_grpc.FederationStub(channel)
        metadata = [("x-fedtl-client", self.name)]
        hello = Hello(self.name, hostname="load", device="none", torch_version=torch.__version__)
        session = ""
        async for message in stub.Connect(wire.hello_to_proto(hello), metadata=metadata):
            instruction = wire.instruction_from_proto(message)
            if isinstance(instruction, Welcome):
                session = instruction.session_id
                if ready is not None:
                    ready.set()
            elif isinstance(instruction, TrainTask):
                await self._answer(stub, metadata, session, instruction)
            elif isinstance(instruction, Finished):
                self.finished = instruction.reason
                return

    async def _answer(self, stub: pb_grpc.FederationStub, metadata: list, session: str, task: TrainTask) -> None:
        trainable = next(s for s in task.segments if s.name == "trainable")
        request = pb.DownloadRequest(session_id=session, sha256=trainable.sha256)
        download = self._channel.unary_stream("/fedtl.v1.Federation/DownloadModel",
                                              request_serializer=pb.DownloadRequest.SerializeToString, response_deserializer=wire.parse_chunk)
        messages = [m async for m in download(request, metadata=metadata)]
        blob = wire.receive_blob(messages, chunks.Manifest(trainable.total_bytes, trainable.sha256), trainable.total_bytes)
        weights = tensorcodec.decode(blob).tensors
        seed = int.from_bytes(hashlib.sha256(f"{self.name}:{task.round}".encode()).digest()[:4], "little")
        g = torch.Generator().manual_seed(seed)
        update = {k: (torch.randn(v.shape, generator=g) * 1e-3).to(v.dtype) if v.is_floating_point() else torch.zeros_like(v)
                  for k, v in weights.items()}
        out = tensorcodec.encode(update)
        n = 10 + self.index
        header = UpdateHeader(session, task.round, task.base_digest, n, UpdateKind.WEIGHT_DELTA, len(out), tensorcodec.sha256_hex(out))
        try:
            upload = stub_channel_upload(self._channel)
            await upload(_aiter(list(wire.upload_messages(header, out))), metadata=metadata)
            self.sent.append(Sent(task.round, n, update if self.keep_updates else {}))
        except grpc.aio.AioRpcError:
            self.refused += 1  # over-selected and late, or the round closed: expected under load


def stub_channel_upload(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    return channel.stream_unary("/fedtl.v1.Federation/UploadUpdate", request_serializer=None,
                                response_deserializer=pb.UploadReceipt.FromString)


async def _aiter(items: list):  # type: ignore[no-untyped-def]
    for item in items:
        yield item


async def run_clients(target: str, count: int, keep_updates: bool = True, per_connection: int = 1, first: int = 0) -> list[LightClient]:
    channels = [grpc.aio.insecure_channel(target, options=OPTIONS) for _ in range(-(-count // per_connection))] if per_connection > 1 else []
    clients = [LightClient(target, f"load-{first + i:05d}" if first or count > 999 else f"load-{i:03d}", first + i, keep_updates,
                           shared=channels[i // per_connection] if channels else None) for i in range(count)]
    try:
        await asyncio.gather(*(c.run() for c in clients))
    finally:
        for channel in channels:
            await channel.close()
    return clients


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_clients")
    p.add_argument("--server", required=True)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--per-connection", type=int, default=1, help="sessions sharing one TCP connection")
    p.add_argument("--first", type=int, default=0, help="index of the first client (names load-NNNNN; several drivers, disjoint ranges)")
    a = p.parse_args()
    start = time.perf_counter()
    clients = asyncio.run(run_clients(a.server, a.clients, keep_updates=False, per_connection=a.per_connection, first=a.first))
    answered = sum(len(c.sent) for c in clients)
    print(json.dumps({"clients": len(clients), "accepted": answered, "refused": sum(c.refused for c in clients),
                      "finished": sum(1 for c in clients if c.finished), "seconds": round(time.perf_counter() - start, 1),
                      "errors": dict(sum((c.errors for c in clients), collections.Counter()))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
