"""Two-server validated aggregation's cost (common/validated_sum) against SecAgg+, in one run.

At the EfficientNet-Lite0 head's size (12,810 values), 8 clients, b-bit values: each party's compute timed on its
own, as on its own machine. SecAgg+ (bench/secagg.py's in-process round: encode, keys, shares, masks, tags, reveals;
the coordinator's unmasking) against validated sharing (each client's proof: bits, slack, the two gadget
polynomials, shares; each server's check of every client: expand, one opening, the decision; then the share sums). The critical path of a deployment is the
slowest client's work plus the servers' (the two servers run side by side: the slower one counts). Bytes: what a
client uploads to the leader, and what the servers exchange per client.

`python -m bench.validated_sum [--coordinates 12810] [--bits 16]` -> bench/results/validated_sum.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.procs import machine
from bench.secagg import one_round
from fedtl.common.secagg import fixedpoint
from fedtl.common.validated_sum import field, proof

HEAD_VALUES = 12_810  # EfficientNet-Lite0's 1280 x 10 head and its bias


def validated_round(n: int, coordinates: int, bits: int) -> dict:
    shape = proof.Shape(coordinates, bits, proof.norm_bound(bits, coordinates))
    rng = np.random.default_rng(0)
    levels = (1 << bits) - 1
    clients, inputs, work = [], [], []
    for i in range(n):
        update = rng.normal(size=coordinates)
        update *= (0.5 + 0.5 * i / n) / np.linalg.norm(update)  # norms within the clip (1)
        x = np.floor((update + 1.0) / 2.0 * levels + rng.random(coordinates)).astype(np.int64)
        start = time.perf_counter()
        clients.append(proof.share(proof.wires_of(x, shape), shape))
        work.append(time.perf_counter() - start)
        inputs.append(x)
    challenge = proof.Challenge.from_seed(b"bench-challenge-seed-32-bytes..!", shape)
    seconds = {"leader": 0.0, "helper": 0.0}
    parties = []
    for leader_share, helper_seed in clients:
        start = time.perf_counter()
        leader = proof.Party(shape, leader=leader_share)
        leader_open = leader.open(challenge)
        seconds["leader"] += time.perf_counter() - start
        start = time.perf_counter()
        helper = proof.Party(shape, seed=helper_seed)
        helper_open = helper.open(challenge)
        seconds["helper"] += time.perf_counter() - start
        start = time.perf_counter()
        assert proof.valid(shape, leader.binding(), helper.binding(), leader_open, helper_open)
        decide = time.perf_counter() - start
        seconds["leader"] += decide
        seconds["helper"] += decide
        parties.append((leader, helper))
    sums = {}
    for role, index in (("leader", 0), ("helper", 1)):
        start = time.perf_counter()
        total = np.zeros(coordinates, dtype=np.uint64)
        for pair in parties:
            total = field.add(total, pair[index].input_share())
        sums[role] = total
        seconds[role] += time.perf_counter() - start
    exact = bool(np.array_equal(field.add(sums["leader"], sums["helper"]).astype(np.int64), sum(inputs)))
    exchange = 2 * (32 + (shape.side + shape.norm_side + 4) * 8)  # both directions: a binding and an opening
    return {"clients": n, "coordinates": coordinates, "bits": bits, "wires_per_client": shape.wires, "exact": exact,
            "slowest_client_seconds": max(work), "leader_seconds": seconds["leader"], "helper_seconds": seconds["helper"],
            "upload_to_leader_bytes": (shape.wires + shape.proof_length) * 8, "upload_to_helper_bytes": proof.SEED_BYTES,
            "server_exchange_bytes_per_client": exchange}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--coordinates", type=int, default=HEAD_VALUES)
    p.add_argument("--bits", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("bench/results/validated_sum.json"))
    a = p.parse_args()
    secagg = one_round(a.clients, a.clients // 2 + 1, {}, size=a.coordinates, word_bits=32)
    validated = validated_round(a.clients, a.coordinates, a.bits)
    secagg_path = secagg["slowest_client_seconds"] + secagg["coordinator_unmask_seconds"]
    validated_path = validated["slowest_client_seconds"] + max(validated["leader_seconds"], validated["helper_seconds"])
    result = {"machine": machine(), "secagg_plus": secagg, "validated": validated,
              "critical_path_seconds": {"secagg_plus": secagg_path, "validated": validated_path},
              "ratio_validated_to_secagg_plus": validated_path / secagg_path,
              "upload_ratio_to_secagg_plus_32bit": validated["upload_to_leader_bytes"] / (fixedpoint.length(a.coordinates) * 4)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
