"""Update and model compression on real CIFAR-10 through the real federation: bytes, accuracy, time, slow links.

One command: `python -m bench.compression.run [--data ../shared/datasets/cifar10-jpeg.tar.gz]`

- EfficientNet-Lite0, `--train all`, the reference data of bench/learning (ImageNet weights, 5,000 training images,
  2,000 test, 64 px, 4 IID clients, all every round), 10 rounds per codec on loopback: raw; int8; topk:0.01 (error
  feedback); fp16; int8 and topk+int8:0.01 each with `--download-codec delta`.
- The same through a simulated slow link on every client (`--simulate-link 10/50`: a token bucket in the client's
  transport, 10 Mbit/s up, 50 Mbit/s down): raw, int8 + delta, topk+int8:0.01 + delta; time to the raw run's final
  accuracy.
- ResNet-18, `--train all`, random init (no ImageNet weights on this machine), 32 px, the same data: raw, topk:0.01
  and topk+int8:0.01 + delta, 10 rounds; and through the slow link, where its 45 MB each way dominate a round: raw
  (10 rounds) and topk+int8:0.01 + delta (up to 20 rounds, to see when it reaches the raw run's final accuracy).
- Encode and decode cost of every upload codec on both models' full updates, in one process, against raw's
  encode (a copy into the upload buffer: the floor).
Writes bench/compression/results/results.json, RESULTS.md and accuracy_vs_bytes.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.learning.run import RECIPE as LEARNING_RECIPE
from bench.procs import machine, rounds, run_federation

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLIENTS = 4
ROUNDS = 10
SLOW_LINK = "10/50"


def _recipe(rounds: int) -> list[str]:
    recipe = list(LEARNING_RECIPE)
    recipe[recipe.index("--rounds") + 1] = str(rounds)
    return recipe


EFFICIENTNET = [*_recipe(ROUNDS), "--train", "all"]
RESNET = [*_recipe(ROUNDS), "--train", "all", "--model", "resnet18", "--weights", "none", "--image-size", "32"]  # later flags win
BEST = ["--upload-codec", "topk+int8:0.01", "--download-codec", "delta"]
INT8_DELTA = ["--upload-codec", "int8", "--download-codec", "delta"]

# name -> (model, codec label, server flags, client link); later flags win (--rounds)
EXPERIMENTS: dict[str, tuple[str, str, list[str], str]] = {
    "lite0_raw": ("efficientnet_lite0", "raw", EFFICIENTNET, ""),
    "lite0_fp16": ("efficientnet_lite0", "fp16", [*EFFICIENTNET, "--upload-codec", "fp16"], ""),
    "lite0_int8": ("efficientnet_lite0", "int8", [*EFFICIENTNET, "--upload-codec", "int8"], ""),
    # int8's rounding draws fresh noise every run (training and top-k are seeded): two more runs show its spread
    "lite0_int8_again": ("efficientnet_lite0", "int8", [*EFFICIENTNET, "--upload-codec", "int8"], ""),
    "lite0_int8_third": ("efficientnet_lite0", "int8", [*EFFICIENTNET, "--upload-codec", "int8"], ""),
    "lite0_topk": ("efficientnet_lite0", "topk:0.01", [*EFFICIENTNET, "--upload-codec", "topk:0.01"], ""),
    "lite0_int8_delta": ("efficientnet_lite0", "int8 / delta", [*EFFICIENTNET, *INT8_DELTA], ""),
    "lite0_topk_int8_delta": ("efficientnet_lite0", "topk+int8:0.01 / delta", [*EFFICIENTNET, *BEST], ""),
    "lite0_raw_slow": ("efficientnet_lite0", "raw", EFFICIENTNET, SLOW_LINK),
    "lite0_int8_delta_slow": ("efficientnet_lite0", "int8 / delta", [*EFFICIENTNET, *INT8_DELTA], SLOW_LINK),
    "lite0_topk_int8_delta_slow": ("efficientnet_lite0", "topk+int8:0.01 / delta", [*EFFICIENTNET, *BEST], SLOW_LINK),
    "resnet18_raw": ("resnet18", "raw", RESNET, ""),
    "resnet18_topk": ("resnet18", "topk:0.01", [*RESNET, "--upload-codec", "topk:0.01"], ""),
    "resnet18_topk_int8_delta": ("resnet18", "topk+int8:0.01 / delta", [*RESNET, *BEST], ""),
    "resnet18_raw_slow": ("resnet18", "raw", RESNET, SLOW_LINK),
    "resnet18_topk_int8_delta_slow": ("resnet18", "topk+int8:0.01 / delta", [*RESNET, *BEST, "--rounds", "20"], SLOW_LINK),
}


def federated(name: str, data: str, work: Path) -> dict:
    model, label, server_args, link = EXPERIMENTS[name]
    run_dir = work / name
    args = [*server_args, "--data", data]
    link_flags = ["--simulate-link", link] if link else []
    started = time.monotonic()
    run_federation(run_dir, args, {f"org{i}": ["--data", data, "--workdir", str(run_dir / f"org{i}"), "--threads", "1", *link_flags]
                                   for i in range(CLIENTS)}, work, name)
    recorded = [*args[:-1], os.path.relpath(data, HERE.parents[1])]
    return {"name": name, "model": model, "codec": label, "link": link, "server_args": recorded, "rounds": rounds(run_dir),
            "wall_seconds": time.monotonic() - started}


def codec_costs(repeats: int = 5) -> dict[str, dict[str, dict[str, float]]]:
    """Encode and decode seconds (median) and bytes of each upload codec for a full update of each model."""
    import torch

    from fedtl.common import codecs
    from fedtl.common.codecs import UpdateSource
    from fedtl.common.models import build_network

    torch.set_num_threads(1)  # as each client runs
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in ("efficientnet_lite0", "resnet18"):
        net = build_network(model, 10, "none", 0)
        g = torch.Generator().manual_seed(0)
        update = {n: (torch.randn(t.shape, generator=g) * 1e-3 if t.is_floating_point() else t.clone())
                  for n, t in net.module.state_dict().items()}
        specs = {n: (t.dtype, tuple(t.shape)) for n, t in update.items()}
        buffers = frozenset(update) - {n for n, _ in net.module.named_parameters()}  # sent exactly, as clients do
        out[model] = {}
        for name in ("raw", "fp16", "int8", "topk:0.01", "topk+int8:0.01"):
            codec = codecs.get(name)
            encode, decode = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                blob = codec.encode(UpdateSource.of(update, buffers))
                t1 = time.perf_counter()
                codec.decode_update(blob, specs)
                decode.append(time.perf_counter() - t1)
                encode.append(t1 - t0)
            out[model][name] = {"encode_s": statistics.median(encode), "decode_s": statistics.median(decode), "bytes": len(blob)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compression.run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--only", nargs="*", default=None, help="experiment names to (re)run (or 'costs'); others are kept")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    if not Path(a.data).exists():
        print(f"need the CIFAR-10 JPEG archive: --data /path/to/cifar10-jpeg.tar.gz (not found: {a.data})", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"federated": {}}
    names = a.only if a.only is not None else [*EXPERIMENTS, "costs"]
    if "costs" in names:
        print("== encode/decode cost", flush=True)
        results["codec_costs"] = codec_costs()
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name not in EXPERIMENTS:
                continue
            print(f"== {name}", flush=True)
            results["federated"][name] = federated(name, a.data, Path(tmp))
            last = results["federated"][name]["rounds"][-1]
            print(f"   final test accuracy {100 * last['test_accuracy']:.2f}%, {results['federated'][name]['wall_seconds']:.0f}s wall", flush=True)
            results["machine"] = machine()
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    from bench.compression.report import write_report

    write_report(results, a.out)
    print(f"wrote {a.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
