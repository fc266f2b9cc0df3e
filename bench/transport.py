"""Transport floors and broadcast: how close does sending the global model come to raw gRPC on loopback?

Measured in one run, on the same bytes (a ResNet-18 state dict, 44.7 MB):
- memcpy floor: one copy of the model's bytes;
- raw gRPC floor: a bare grpcio server streaming pre-made byte chunks to K concurrent receivers
  that discard them (no protobuf parse, no hashing) -- the best grpcio can do here;
- ours: the real server's DownloadModel to K concurrent receivers that do what a client does
  (parse, reassemble, verify sha256).
Receivers run in one separate process in both cases, so the comparison is like for like.

`python -m bench.transport [--clients 1 4 16] [--chunks 65536 262144 1048576 4194240]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from bench.procs import Process, machine, start_server, summary
from fedtl.common import chunks, tensorcodec, wire
from fedtl.common.config import Hello, TrainTask, Welcome
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc

RAW_METHOD = "/bench.Raw/Stream"
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def model_bytes(name: str = "resnet18") -> bytearray:
    from fedtl.common.models import build_network

    return tensorcodec.encode(build_network(name, 10, "none").module.state_dict())


# ---------------------------------------------------------------- raw gRPC floor server (separate process)


def raw_server(total: int, chunk: int) -> None:
    """Serve RAW_METHOD: stream `total` bytes in `chunk`-sized messages, pre-made, identity-serialised."""
    payload = bytes(total)
    pieces = [payload[i : i + chunk] for i in range(0, total, chunk)]

    async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for piece in pieces:
            yield piece

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("bench.Raw", {"Stream": grpc.unary_stream_rpc_method_handler(stream)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def _raw_receive(port: int, clients: int) -> float:
    """K receivers, one thread and one connection each, that drain the raw stream."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) for _ in range(clients)]
    for c in channels:
        grpc.channel_ready_future(c).result(timeout=30)

    def one(channel: grpc.Channel) -> int:
        return sum(len(piece) for piece in channel.unary_stream(RAW_METHOD)(b""))

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        list(pool.map(one, channels))
        elapsed = time.perf_counter() - start
    for c in channels:
        c.close()
    return elapsed


def _ours_receive(port: int, clients: int, repeats: int) -> list[float]:
    """Join as K clients, take round 1's task, then download the model together `repeats` times,
    each receiver doing exactly what client/connection.py does (parse, reassemble, verify sha256)."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) for _ in range(clients)]
    sessions, streams = [], []
    for i, channel in enumerate(channels):
        stream = pb_grpc.FederationStub(channel).Connect(wire.hello_to_proto(Hello(f"rx{i}")))
        welcome = wire.instruction_from_proto(next(stream))
        assert isinstance(welcome, Welcome)
        sessions.append(welcome.session_id)
        streams.append(stream)
    task = wire.instruction_from_proto(next(streams[0]))
    assert isinstance(task, TrainTask)
    ref = next(r for r in task.segments if r.name == "trainable")
    manifest = chunks.Manifest(ref.total_bytes, ref.sha256)
    downloads = [c.unary_stream("/fedtl.v1.Federation/DownloadModel", request_serializer=pb.DownloadRequest.SerializeToString,
                                response_deserializer=wire.parse_chunk) for c in channels]

    def one(i: int) -> None:
        wire.receive_blob(downloads[i](pb.DownloadRequest(session_id=sessions[i], sha256=ref.sha256)), manifest, ref.total_bytes)

    times = []
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(one, range(clients)))
            times.append(time.perf_counter() - start)
    for s in streams:
        s.cancel()
    for c in channels:
        c.close()
    return times


def measure(clients_list: list[int], chunk_list: list[int], repeats: int, work: Path) -> dict:
    blob = model_bytes()
    total = len(blob)
    results: dict = {"model": "resnet18", "bytes": total, "repeats": repeats, "runs": []}
    copies = []
    for _ in range(10):
        start = time.perf_counter()
        bytes(memoryview(blob))
        copies.append(time.perf_counter() - start)
    results["memcpy"] = {"seconds": summary(copies), "mb_per_s": total / summary(copies)["median"] / 1e6}
    for chunk in chunk_list:
        floor_server = Process(["-c", f"from bench.transport import raw_server; raw_server({total}, {chunk})"], work / f"raw-{chunk}.log")
        try:
            while not (work / f"raw-{chunk}.log").read_text().strip():
                time.sleep(0.05)
            port = int((work / f"raw-{chunk}.log").read_text().split()[0])
            for k in clients_list:
                floor = [_run_receiver("raw", port, k, 1)[0] for _ in range(repeats)]
                results["runs"].append({"path": "raw_grpc", "chunk": chunk, "clients": k, "seconds": summary(floor),
                                        "mb_per_s": k * total / summary(floor)["median"] / 1e6})
        finally:
            floor_server.stop()
        for k in clients_list:
            run_dir = work / f"ours-{chunk}-{k}"
            server, port = start_server(run_dir, ["--model", "resnet18", "--weights", "none", "--data", "synthetic:100",
                                                  "--rounds", "1", "--min-clients", str(k), "--join-grace", "0.5",
                                                  "--eval-every", "0", "--round-timeout", "600", "--chunk-bytes", str(chunk)],
                                        work / f"server-{chunk}-{k}.log")
            try:
                ours = _run_receiver("ours", port, k, repeats)
            finally:
                server.stop()
            results["runs"].append({"path": "fedtl", "chunk": chunk, "clients": k, "seconds": summary(ours),
                                    "mb_per_s": k * total / summary(ours)["median"] / 1e6})
    return results


def _run_receiver(kind: str, port: int, clients: int, repeats: int) -> list[float]:
    """Receivers in their own process, so the server and the receivers each have a core."""
    code = ("import json, bench.transport as t; "
            f"print(json.dumps(t._{kind}_receive({port}, {clients}{'' if kind == 'raw' else f', {repeats}'})))")
    out = Process(["-c", code], Path(tempfile.mkstemp(suffix=".log")[1]))
    if out.wait(600) != 0:
        raise RuntimeError(out.log.read_text()[-3000:])
    value = json.loads(out.log.read_text().strip().splitlines()[-1])
    return value if isinstance(value, list) else [value]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transport")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--chunks", type=int, nargs="+", default=[65536, 262144, 1 << 20, (4 << 20) - 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/transport.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = measure(a.clients, a.chunks, a.repeats, Path(work))
    results["machine"] = machine()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"memcpy of {results['bytes'] / 1e6:.1f} MB: {results['memcpy']['mb_per_s']:.0f} MB/s")
    floors = {(r["chunk"], r["clients"]): r["mb_per_s"] for r in results["runs"] if r["path"] == "raw_grpc"}
    for r in results["runs"]:
        if r["path"] == "fedtl":
            floor = floors[(r["chunk"], r["clients"])]
            print(f"chunk {r['chunk']:>8} B, {r['clients']:>2} clients: raw gRPC {floor:7.0f} MB/s, fedtl {r['mb_per_s']:7.0f} MB/s "
                  f"({100 * r['mb_per_s'] / floor:.0f}% of floor), median {r['seconds']['median']:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
