"""Turn bench/compression results into RESULTS.md and accuracy_vs_bytes.png (no number is typed in by hand)."""

from __future__ import annotations

import statistics
from pathlib import Path


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f} MB" if x >= 1e5 else f"{x / 1e3:.1f} kB"


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def _trained(run: dict) -> list[dict]:
    return [r for r in run["rounds"] if r["round"] > 0]


def summary(run: dict) -> dict:
    rs = _trained(run)
    later = rs[1:] or rs
    return {"up": statistics.mean(r["bytes_up"] for r in rs), "down_first": rs[0]["bytes_down"],
            "down": statistics.mean(r["bytes_down"] for r in later), "acc": rs[-1]["test_accuracy"],
            "seconds": statistics.mean(r["seconds"] for r in later), "elapsed": rs[-1]["elapsed"]}


def time_to(run: dict, accuracy: float) -> float | None:
    """Seconds from the start of round 1 until a round's model reached `accuracy` (None: never in this run)."""
    for r in _trained(run):
        if r["test_accuracy"] >= accuracy - 1e-12:
            return r["elapsed"]
    return None


def codec_table(results: dict) -> list[str]:
    runs = results["federated"]
    lines = ["| run | model | upload / download codec | link | up per round | down, round 1 | down per round after | up ratio | "
             "final acc | Δ acc vs raw | s per round |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in runs.items():
        s = summary(run)
        raw_name = _raw_name(run)
        raw = summary(runs[raw_name]) if raw_name in runs else s
        lines.append(f"| {name} | {run['model']} | {run['codec']} | {run['link'] + ' Mbit/s' if run['link'] else 'loopback'} | {_mb(s['up'])} | "
                     f"{_mb(s['down_first'])} | {_mb(s['down'])} | {_ratio(raw['up'] / s['up'])} | {100 * s['acc']:.2f}% | "
                     f"{100 * (s['acc'] - raw['acc']):+.2f} | {s['seconds']:.1f} |")
    return lines


def _raw_name(run: dict) -> str:
    """The same model's uncompressed run through the same link."""
    return ("lite0_raw" if run["model"] == "efficientnet_lite0" else "resnet18_raw") + ("_slow" if run["link"] else "")


def slow_link_table(results: dict) -> list[str]:
    runs = results["federated"]
    lines = ["Target: each model's raw run's final accuracy through the same link.", "",
             "| run | model | codec | rounds | s per round | target | reached target after | sooner than raw |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in runs.items():
        if not run["link"] or _raw_name(run) not in runs:
            continue
        raw = runs[_raw_name(run)]
        target = summary(raw)["acc"]
        base, t = time_to(raw, target), time_to(run, target)
        ratio = f"{base / t:.2f}×" if t and base else "n/a"
        trained = len(_trained(run))
        reached = f"{t:.0f} s (round {next(r['round'] for r in _trained(run) if r['elapsed'] == t)})" if t is not None else f"not in {trained} rounds"
        lines.append(f"| {name} | {run['model']} | {run['codec']} | {trained} | {summary(run)['seconds']:.1f} | {100 * target:.2f}% | {reached} | {ratio} |")
    return lines


def cost_table(results: dict) -> list[str]:
    costs = results.get("codec_costs")
    if not costs:
        return []
    lines = ["| model | codec | bytes | encode ms | decode ms | encode + decode vs raw's encode |", "| --- | --- | --- | --- | --- | --- |"]
    for model, table in costs.items():
        floor = table["raw"]["encode_s"]
        for codec, c in table.items():
            lines.append(f"| {model} | {codec} | {_mb(c['bytes'])} | {1e3 * c['encode_s']:.1f} | {1e3 * c['decode_s']:.1f} | "
                         f"{(c['encode_s'] + c['decode_s']) / floor:.1f}× |")
    return lines


def write_report(results: dict, out: Path) -> None:
    m = results.get("machine", {})
    lines = ["# bench/compression results", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', 0):.1f} GB, no GPU; "
             f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}. Every run: a real server and 4 client processes "
             "(1 torch thread each) on this machine, 10 rounds (one slow-link run 20), all 4 clients every round. Written by "
             "`python -m bench.compression.run`.", "",
             "## Bytes and accuracy per codec", "",
             "Bytes are what the round records counted on the wire, all 4 clients together; `up ratio` against the same "
             "model's raw run. Δ acc in points.", "", *codec_table(results), "",
             "## Through a slow link (10 Mbit/s up, 50 Mbit/s down on every client)", "", *slow_link_table(results), "",
             "## Encode and decode cost (one full update, one thread, median of 5)", "", *cost_table(results), "",
             "![accuracy against bytes](accuracy_vs_bytes.png)", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
    _plot(results, out / "accuracy_vs_bytes.png")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["federated"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [("efficientnet_lite0", False, "bytes", "EfficientNet-Lite0, --train all: accuracy against bytes moved"),
              ("resnet18", False, "bytes", "ResNet-18 (random init), --train all"),
              ("efficientnet_lite0", True, "time", "EfficientNet-Lite0 through 10/50 Mbit/s: accuracy against time"),
              ("resnet18", True, "time", "ResNet-18 through 10/50 Mbit/s: accuracy against time")]
    for ax, (model, slow, x, title) in zip(axes.reshape(-1), panels):
        for name, run in runs.items():
            if run["model"] != model or bool(run["link"]) != slow:
                continue
            rs = run["rounds"]
            if x == "bytes":  # from round 1 (round 0 moved nothing: a log axis has no place for it)
                xs, total = [], 0
                for r in rs:
                    total += r.get("bytes_up", 0) + r.get("bytes_down", 0)
                    xs.append(total / 1e6)
                rs, xs = rs[1:], xs[1:]
                ax.set_xscale("log")
                ax.set_xlabel("cumulative MB moved (up + down, 4 clients)")
            else:
                xs = [r.get("elapsed", 0.0) if r["round"] > 0 else 0.0 for r in rs]
                ax.set_xlabel("seconds since round 1 started")
            ax.plot(xs, [100 * r["test_accuracy"] for r in rs], marker="o", ms=3, label=run["codec"] + (f" ({name.rsplit('_', 1)[1]} run)" if name.endswith(("_again", "_third")) else ""))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
