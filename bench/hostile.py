"""What a hostile participant costs a run: stalled uploads, a silent selected client, and a flood of joins from one
address.

1. Round time with 4 real client processes, without and then with 4 fake selected clients that send an
   update header and then nothing (each holds a staging slot until the stall deadline cuts it off).
2. Two rounds with 4 real clients and one more that joins, is selected and never answers, with default flags: how long
   each round takes (the quorum and the straggler wait close it; before them, every round ran to --round-timeout).
3. 10,000 join attempts from one address (one channel, one Connect after another): the server's memory
   (VmRSS) and log bytes before and after.

`python -m bench.hostile` (tiny model, synthetic data; a few minutes on 2 cores). Writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc

from bench.procs import Process, machine, rounds, start_server
from fedtl.common import wire
from fedtl.common.config import Finished, Hello, TrainTask, UpdateHeader, UpdateKind, Welcome
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:800", "--eval-every", "0", "--join-grace", "1",
        "--finish-grace", "5", "--round-timeout", "600"]


async def _stalling_client(target: str, name: str, stalled: asyncio.Event) -> None:
    """Join; when selected, open an upload with a valid header and then send nothing, until the server cuts it off."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FederationStub(channel)
        stream = stub.Connect(wire.hello_to_proto(Hello(name, identity=name * 4)), metadata=[("x-fedtl-client", name)])
        session = ""
        async for message in stream:
            instruction = wire.instruction_from_proto(message)
            if isinstance(instruction, Welcome):
                session = instruction.session_id
            elif isinstance(instruction, Finished):
                return
            elif isinstance(instruction, TrainTask):
                size = next(s.total_bytes for s in instruction.segments if s.name == "trainable")  # what an honest update weighs
                header = UpdateHeader(session, instruction.round, instruction.base_digest, 10, UpdateKind.WEIGHT_DELTA, size, "0" * 64)
                first = pb.UploadMessage(header=wire.header_to_proto(header)).SerializeToString()

                async def messages(first: bytes = first):  # type: ignore[no-untyped-def]
                    yield first
                    stalled.set()
                    await asyncio.Event().wait()

                upload = channel.stream_unary("/fedtl.v1.Federation/UploadUpdate", request_serializer=None,
                                              response_deserializer=pb.UploadReceipt.FromString)
                try:
                    await upload(messages(), metadata=[("x-fedtl-client", name)])
                except grpc.aio.AioRpcError:
                    pass  # cut off: what the server must do


async def _silent_client(target: str, name: str) -> None:
    """Join and stay: read every instruction, answer none (a selected client gone quiet, its stream open)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FederationStub(channel)
        async for message in stub.Connect(wire.hello_to_proto(Hello(name, identity=name * 4)), metadata=[("x-fedtl-client", name)]):
            if isinstance(wire.instruction_from_proto(message), Finished):
                return


def silent_rounds(work: Path) -> dict:
    """Default flags but for the data: 5 clients (quorum 4), one of them silent, 2 rounds, --round-timeout 600."""
    run_dir = work / "silent"
    server, port = start_server(run_dir, [*TINY, "--rounds", "2", "--min-clients", "5"], work / "server-silent.log")
    clients = [Process(["-m", "client", "--server", f"127.0.0.1:{port}", "--name", f"real{i}", "--data", "synthetic:800",
                        "--workdir", str(run_dir / f"real{i}"), "--threads", "1"], work / f"real-silent-{i}.log") for i in range(4)]

    async def silent() -> None:
        task = asyncio.ensure_future(_silent_client(f"127.0.0.1:{port}", "quiet"))
        await asyncio.get_running_loop().run_in_executor(None, server.wait, 1200)
        task.cancel()

    try:
        asyncio.run(silent())
    finally:
        for c in clients:
            c.stop()
        server.stop()
    records = [r for r in rounds(run_dir) if r["round"] >= 1]
    return {"rounds": [{k: r[k] for k in ("round", "seconds", "answered", "selected", "close_reason")} for r in records],
            "round_timeout": 600.0}


def stalled_round(work: Path, attackers: int, stall: float) -> dict:
    run_dir = work / f"stall-{attackers}"
    total = 4 + attackers
    args = [*TINY, "--rounds", "1", "--min-clients", str(total), "--min-fit-clients", "4", "--stall-timeout", str(stall)]
    server, port = start_server(run_dir, args, work / f"server-stall-{attackers}.log")
    clients = [Process(["-m", "client", "--server", f"127.0.0.1:{port}", "--name", f"real{i}", "--data", "synthetic:800",
                        "--workdir", str(run_dir / f"real{i}"), "--threads", "1"], work / f"real-{attackers}-{i}.log") for i in range(4)]

    async def fakes() -> None:
        events = [asyncio.Event() for _ in range(attackers)]
        tasks = [asyncio.ensure_future(_stalling_client(f"127.0.0.1:{port}", f"fake{i}", e)) for i, e in enumerate(events)]
        await asyncio.get_running_loop().run_in_executor(None, server.wait, 600)
        for t in tasks:
            t.cancel()

    try:
        if attackers:
            asyncio.run(fakes())
        else:
            server.wait(600)
    finally:
        for c in clients:
            c.stop()
        server.stop()
    record = [r for r in rounds(run_dir) if r["round"] == 1][0]
    return {"attackers": attackers, "round_seconds": record["seconds"], "answered": record["answered"], "rejected": record["rejected"],
            "close_reason": record["close_reason"]}


def join_flood(work: Path, attempts: int) -> dict:
    run_dir = work / "flood"
    log = work / "server-flood.log"
    server, port = start_server(run_dir, [*TINY, "--rounds", "1", "--min-clients", "2"], log)

    def rss_kb() -> int:
        status = Path(f"/proc/{server.popen.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])

    async def flood() -> dict[str, int]:
        outcomes: dict[str, int] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            for i in range(attempts):
                call = stub.Connect(wire.hello_to_proto(Hello(f"flood{i}", identity="f" * 64)), metadata=[("x-fedtl-client", f"flood{i}")])
                try:
                    await call.read()
                    outcomes["joined"] = outcomes.get("joined", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                call.cancel()
        return outcomes

    try:
        time.sleep(2)
        before_rss, before_log = rss_kb(), log.stat().st_size
        started = time.monotonic()
        outcomes = asyncio.run(flood())
        seconds = time.monotonic() - started
        time.sleep(1)
        after_rss, after_log = rss_kb(), log.stat().st_size
    finally:
        server.stop()
    return {"attempts": attempts, "outcomes": outcomes, "seconds": seconds, "rss_growth_mb": (after_rss - before_rss) / 1024,
            "log_growth_kb": (after_log - before_log) / 1024}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hostile")
    p.add_argument("--stall-timeout", type=float, default=10.0)
    p.add_argument("--joins", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=Path("bench/results/hostile.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calm = stalled_round(work, 0, a.stall_timeout)
        attacked = stalled_round(work, 4, a.stall_timeout)
        print(f"round with 4 real clients: {calm['round_seconds']:.2f}s; with 4 stalled fakes as well: {attacked['round_seconds']:.2f}s "
              f"(stall timeout {a.stall_timeout:g}s; {attacked['answered']} answered, refused {attacked['rejected']})", flush=True)
        quiet = silent_rounds(work)
        print("with a silent fifth client, default flags: " + ", ".join(
            f"round {r['round']} {r['seconds']:.1f}s ({r['answered']} of {r['selected']}, {r['close_reason']})" for r in quiet["rounds"]),
            flush=True)
        flood = join_flood(work, a.joins)
        print(f"{a.joins} join attempts from one address in {flood['seconds']:.1f}s: {flood['outcomes']}; server RSS "
              f"{flood['rss_growth_mb']:+.1f} MB, log {flood['log_growth_kb']:+.1f} KB", flush=True)
    result = {"stall_timeout": a.stall_timeout, "calm": calm, "attacked": attacked, "silent": quiet, "join_flood": flood,
              "machine": machine()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
