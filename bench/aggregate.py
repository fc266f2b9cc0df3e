"""Upload + aggregation throughput: how many MB of updates per second the server turns into the aggregate.

Two numbers on ResNet-18-sized updates (44.7 MB of float32):
- fold only: Accumulator.add (float64 running sum, folded in cache-sized slices);
- the whole server path minus the socket: chunks into the staging buffer with incremental sha256,
  digest check, zero-copy decode by the raw codec, name/shape/dtype and finiteness checks with norms, fold.
The network part is in bench/transport.py and bench/round_overhead.py.

`python -m bench.aggregate`
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.procs import machine, summary
from fedtl.common import chunks, codecs, tensorcodec
from fedtl.common.config import UpdateKind
from fedtl.common.models import TrainPolicy, build_network
from fedtl.server.model_state import GlobalModel
from fedtl.server.strategies.mean import Accumulator
from fedtl.server.validation import check_tensors


def measure(model: str, updates: int, repeats: int) -> dict:
    net = build_network(model, 10, "none")
    global_model = GlobalModel(net, TrainPolicy.parse("all"), fedbn=False, chunk_bytes=1 << 20)
    template = global_model.tensors(global_model.trainable)
    g = torch.Generator().manual_seed(0)
    blobs = []
    for _ in range(updates):
        delta = {k: (torch.randn(v.shape, generator=g) * 1e-3).to(v.dtype) if v.is_floating_point() else torch.zeros_like(v)
                 for k, v in template.items()}
        blobs.append(bytes(tensorcodec.encode(delta)))
    size = len(blobs[0])
    expect = global_model.expectation(1, "0" * 64, UpdateKind.WEIGHT_DELTA, 10**9)
    manifests = [chunks.manifest_of(b) for b in blobs]
    pieces = [[bytes(p) for p in chunks.split(b, 1 << 20)] for b in blobs]  # as they arrive off the wire

    fold_times, path_times = [], []
    decoded = [tensorcodec.decode(bytearray(b)).tensors for b in blobs]
    for _ in range(repeats):
        acc = Accumulator(template)
        start = time.perf_counter()
        for tensors in decoded:
            acc.add(tensors, 100)
        fold_times.append(time.perf_counter() - start)
    for _ in range(repeats):
        acc = Accumulator(template)
        start = time.perf_counter()
        for manifest, parts in zip(manifests, pieces):
            assembler = chunks.BlobAssembler(manifest, expect.max_blob_bytes)
            for part in parts:
                assembler.add(memoryview(part))
            update = check_tensors(expect, codecs.get("raw").decode(assembler.finish(), expect.specs))
            acc.add(update.tensors, 100)
        path_times.append(time.perf_counter() - start)
    def verify(manifest: chunks.Manifest, parts: list[bytes]) -> dict:
        assembler = chunks.BlobAssembler(manifest, expect.max_blob_bytes, hash_while_receiving=False)
        for part in parts:
            assembler.add(memoryview(part))
        return check_tensors(expect, codecs.get("raw").decode(assembler.finish(), expect.specs)).tensors

    pool_times = []
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as fold:  # as the server: 2 verify workers, 1 FIFO fold thread
        for _ in range(repeats):
            acc = Accumulator(template)
            start = time.perf_counter()
            verified = [pool.submit(verify, m, p) for m, p in zip(manifests, pieces)]
            folds = [fold.submit(lambda f=f, acc=acc: acc.add(f.result(), 100)) for f in verified]
            for f in folds:
                f.result()
            pool_times.append(time.perf_counter() - start)
    folded = size * updates
    return {
        "server_pool": {"seconds": summary(pool_times), "gb_per_s": folded / summary(pool_times)["median"] / 1e9, "verify_workers": 2},
        "model": model, "update_bytes": size, "updates": updates,
        "fold_only": {"seconds": summary(fold_times), "gb_per_s": folded / summary(fold_times)["median"] / 1e9},
        "receive_check_fold": {"seconds": summary(path_times), "gb_per_s": folded / summary(path_times)["median"] / 1e9},
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aggregate")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/aggregate.json"))
    a = p.parse_args()
    result = measure(a.model, a.updates, a.repeats)
    result["machine"] = machine()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{a.model}: {a.updates} updates of {result['update_bytes'] / 1e6:.1f} MB; fold only {result['fold_only']['gb_per_s']:.2f} GB/s; "
          f"receive+verify+check+fold {result['receive_check_fold']['gb_per_s']:.2f} GB/s on one thread, "
          f"{result['server_pool']['gb_per_s']:.2f} GB/s as the server runs it (2 verify workers + 1 fold thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
