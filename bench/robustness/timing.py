"""What a robust rule adds to a round: folding 10 updates and computing the result, against the streaming mean, in
one run. Head-only updates of the reference model (EfficientNet-Lite0's 10-way head: 12,810 values) and, for scale,
a full ResNet-18 (11.7 M values).

`python -m bench.robustness.timing` -> bench/robustness/results/timing.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench.procs import machine, summary
from fedtl.common.config import UpdateKind
from fedtl.server.strategies import StrategySettings, build_strategy
from fedtl.server.strategies.base import RoundContext
from fedtl.server.validation import Update

HERE = Path(__file__).resolve().parent
RULES = {"mean": {}, "median": {"rule": "median"}, "trimmed-mean": {"rule": "trimmed-mean", "rule_options": {"fraction": 0.3}},
         "multi-krum": {"rule": "krum", "rule_options": {"byzantine": 3, "select": 7}}, "geomedian": {"rule": "geomedian"},
         "dnc": {"rule": "dnc", "rule_options": {"byzantine": 3}}}
SHAPES = {"head (efficientnet_lite0)": {"classifier.weight": (10, 1280), "classifier.bias": (10,)},
          "full resnet18": {"w": (11_689_512,)}}


def time_rule(rule: dict, shapes: dict[str, tuple[int, ...]], clients: int, repeats: int, spill: Path) -> dict:
    torch.manual_seed(0)
    template = {n: torch.zeros(s) for n, s in shapes.items()}
    updates = [{n: torch.randn(s) * 0.01 for n, s in shapes.items()} for _ in range(clients)]
    context = RoundContext(1, UpdateKind.WEIGHT_DELTA, frozenset(shapes))
    strategy = build_strategy(StrategySettings(weighting="examples", **rule), spill_dir=spill)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aggregator = strategy.open(template, context)
        for i, tensors in enumerate(updates):
            aggregator.add(f"c{i}", Update(dict(tensors)), 500.0)
        aggregator.result()
        times.append(time.perf_counter() - start)
    return summary(times)


def main() -> int:
    out: dict = {"machine": machine(), "clients": 10, "models": {}}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for model, shapes in SHAPES.items():
            repeats = 30 if model.startswith("head") else 3
            rows = {name: time_rule(rule, shapes, 10, repeats, Path(tmp)) for name, rule in RULES.items()}
            mean = rows["mean"]["median"]
            out["models"][model] = {name: {"seconds": r["median"], "added_ms": 1000 * (r["median"] - mean)} for name, r in rows.items()}
            print(model, {name: f"{1000 * r['median']:.2f} ms" for name, r in rows.items()}, flush=True)
    (HERE / "results" / "timing.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
