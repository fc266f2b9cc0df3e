"""Secure aggregation's cost: what each party computes, and what a round costs against a plain one in the same run.

1. Primitives: one ChaCha20 mask of ResNet-18's size (64- and 32-bit words), X25519 + HKDF per pair.
2. One secure round of ResNet-18 (11.7 M trainable values) with 8 participants, in process, each party timed on
   its own (as on its own machine), in the steady state of round 2 on (each client reuses its encoding buffer):
   every client's work (encode, shares, masks, tags, reveals) and the
   coordinator's unmasking; then 3 of the 8 killed mid-protocol (threshold 5), checked bit-exact against the
   plain sum of the other 5.
3. Real processes: ResNet-18, 8 clients, one SGD step each, plain vs secure (default 64-bit words, and 32-bit words
   with --secagg-bits 16 --secagg-max-weight 1024), median of rounds 2-5, alternating in one run.
   The critical path of a real deployment, where each client's crypto runs on its own machine, is the plain round
   + the slowest client's work + the coordinator's unmasking (2.); on this box the 8 clients share 2 cores, so the
   co-located wall time is reported too.

`python -m bench.secagg [--rounds 5]` -> bench/results/secagg.json
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.procs import machine, rounds, run_federation, summary
from fedtl.client.secagg import SecureRound
from fedtl.common.secagg import crypto, fixedpoint
from fedtl.common.secagg.messages import SecAggSetup
from fedtl.server.secagg.protocol import PHASES, SecAggRound

RESNET18_VALUES = 11_689_512  # trainable float values of ResNet-18 with a 10-way head (parameters and BatchNorm buffers)
CLIP, BITS = 10.0, 24


def primitives() -> dict:
    seed = bytes(range(32))
    out = {}
    for bits, dtype in ((64, np.uint64), (32, np.uint32)):
        vector = np.zeros(RESNET18_VALUES, dtype=dtype)
        crypto.add_mask(vector, seed, +1)  # warm the pages
        times = []
        for _ in range(5):
            start = time.perf_counter()
            crypto.add_mask(vector, seed, +1)
            times.append(time.perf_counter() - start)
        out[f"mask_resnet18_{bits}bit_seconds"] = summary(times)["median"]
    (a, _), (_, b_pub) = crypto.keypair(), crypto.keypair()
    start = time.perf_counter()
    for _ in range(2000):
        crypto.agree(a, b_pub, b"mask", b"context")
    out["x25519_hkdf_per_pair_us"] = (time.perf_counter() - start) / 2000 * 1e6
    return out


def one_round(n: int, threshold: int, drop: dict[str, set[str]], size: int = RESNET18_VALUES, word_bits: int = 64) -> dict:
    """A secure round in process; each party's compute timed on its own. 32-bit words: 16-bit values, weights <= 1024."""
    names = [f"c{i}" for i in range(n)]
    bits, max_weight = (BITS, 1 << 16) if word_bits == 64 else (16, 1024)
    setup = SecAggSetup(tuple(names), threshold, n - 1, b"bench", bits, CLIP, max_weight, 1, word_bits)
    server = SecAggRound(setup, 1, "digest")
    rng = np.random.default_rng(0)
    update = rng.normal(size=size) * 1e-3
    work = {name: 0.0 for name in names}
    clients, inputs = {}, {}
    for name in names:
        buffer = np.ones(fixedpoint.length(size), dtype=fixedpoint.WORDS[word_bits])  # a client's buffer from its last round
        start = time.perf_counter()
        encoded, _ = fixedpoint.encode(update, 100, CLIP, bits, rng, {"train_loss": 1.0}, word_bits, buffer)
        work[name] += time.perf_counter() - start
        inputs[name] = encoded.copy()  # the bench's reference copy, not the client's work
        start = time.perf_counter()
        clients[name] = SecureRound(setup, 1, "digest", name, "s", encoded)
        work[name] += time.perf_counter() - start
    total = np.zeros(fixedpoint.length(size), dtype=fixedpoint.WORDS[word_bits])
    expected, answered = list(names), {}
    for phase in PHASES:
        if phase != PHASES[0]:
            server.opened(phase, expected)
        got = []
        for name in expected:
            if name in drop.get(phase, set()):
                continue
            start = time.perf_counter()
            answer = clients[name].start() if phase == PHASES[0] else clients[name].handle(server.instruction(phase, name))
            work[name] += time.perf_counter() - start
            if phase == "train":
                np.add(total, answer, out=total)
            else:
                server.receive(phase, name, answer)
            got.append(name)
        answered[phase], expected = got, got
    start = time.perf_counter()
    unmasked = server.unmask(total)
    unmask_seconds = time.perf_counter() - start
    plain = np.zeros_like(total)
    for name in answered["train"]:
        np.add(plain, inputs[name], out=plain)
    slowest = max(work[name] for name in answered["unmask"])
    return {"participants": n, "threshold": threshold, "word_bits": word_bits, "dropped": {k: sorted(v) for k, v in drop.items()},
            "summed": answered["train"], "exact": bool(np.array_equal(unmasked, plain)),
            "slowest_client_seconds": slowest, "coordinator_unmask_seconds": unmask_seconds}


def process_run(config: str, extra: list[str], rounds_total: int, work: Path) -> dict:
    n = 8
    run_dir = work / config
    args = ["--model", "resnet18", "--weights", "none", "--data", f"synthetic:{8 * n}", "--rounds", str(rounds_total),
            "--min-clients", str(n), "--max-steps", "1", "--batch-size", "8", "--eval-every", "0", "--join-grace", "1",
            "--round-timeout", "600", "--finish-grace", "5", *extra]
    rss = run_federation(run_dir, args, {f"c{i}": ["--data", f"synthetic:{8 * n}", "--workdir", str(run_dir / f"c{i}"), "--threads", "1"]
                                         for i in range(n)}, work, config, 1800)
    records = [r for r in rounds(run_dir) if r["round"] >= 2]
    client_work = [float(x) for i in range(n) for x in re.findall(r"share of the work took ([0-9.]+)s", (work / f"{config}-c{i}.log").read_text())]
    return {"config": config, "server_args": extra, "seconds": summary([r["seconds"] for r in records]),
            "phases_median": {k: summary([r["phases"][k] for r in records])["median"] for k in records[0]["phases"]},
            "bytes_up_per_round": records[0]["bytes_up"], "server_peak_rss_mb": rss.peak_kb / 1024,
            "client_work_seconds_colocated": summary(client_work) if client_work else None}


CONFIGS = {
    "plain": [],
    "secure_64bit": ["--secure-aggregation", "--max-update-norm", str(CLIP)],
    "secure_32bit": ["--secure-aggregation", "--max-update-norm", str(CLIP), "--secagg-bits", "16", "--secagg-max-weight", "1024"],
}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.secagg")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each configuration")
    p.add_argument("--out", type=Path, default=Path("bench/results/secagg.json"))
    a = p.parse_args()
    result: dict = {"machine": machine(), "primitives": primitives()}
    result["round_8_clients"] = {bits: one_round(8, 6, {}, word_bits=bits) for bits in (64, 32)}
    result["three_of_eight_killed"] = one_round(8, 5, {"share": {"c1"}, "train": {"c5"}, "check": {"c6"}})
    print(json.dumps(result, indent=1))
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(a.repeats):
            for name, extra in CONFIGS.items():
                runs[name].append(process_run(f"{name}-{repeat}", extra, a.rounds, Path(tmp)))
                print(name, runs[name][-1]["seconds"]["median"], flush=True)
    result["processes"] = runs
    plain = summary([r["seconds"]["median"] for r in runs["plain"]])["median"]
    ratios = {}
    for name in ("secure_64bit", "secure_32bit"):
        bits = 64 if name.endswith("64bit") else 32
        isolated = result["round_8_clients"][bits]
        colocated = summary([r["seconds"]["median"] for r in runs[name]])["median"]
        critical = plain + isolated["slowest_client_seconds"] + isolated["coordinator_unmask_seconds"]
        ratios[name] = {"plain_round_seconds": plain, "secure_round_colocated_seconds": colocated, "colocated_ratio": colocated / plain,
                        "critical_path_seconds": critical, "critical_path_ratio": critical / plain}
    result["ratios"] = ratios
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
