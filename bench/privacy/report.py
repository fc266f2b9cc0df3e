"""bench/privacy results -> RESULTS.md (a table per data size, the cost of a private round) and accuracy_vs_epsilon.png.
No number is typed in by hand."""

from __future__ import annotations

import statistics
from pathlib import Path

SCALES = {"reference": "reference: 500 training images per class (5,000), 4 clients",
          "all": "all 50,000 training images, 4 clients (12,500 each)",
          "heads": "closed-form heads: all 50,000 training images at 128 px, 4 clients"}
MODES = {"record": "record-level DP-SGD", "client": "client-level DP-FedAvg",
         "distributed": "client-level, noise from the clients under secure aggregation"}
EPSILONS = (1.0, 3.0, 8.0)


def _acc(run: dict | None) -> float | None:
    return run["rounds"][-1]["test_accuracy"] if run else None


def _spent(run: dict) -> float | None:
    last = run["rounds"][-1]
    return last.get("epsilon") if run["mode"] in ("client", "distributed") else last.get("record_epsilon") or None


def _median_round(run: dict) -> float:
    return statistics.median(r["seconds"] for r in run["rounds"] if r["round"] >= 2)


def head_table(runs: dict) -> list[str]:
    """The `heads` scale: every run's final and round-1 accuracy, against the non-private default (a ridge head)."""
    base = _acc(runs["none"])
    lines = [f"### {SCALES['heads']}", "",
             f"Non-private with the default ridge head in round 1, then 4 SGD rounds: **{100 * base:.2f}%** after 5 rounds.", "",
             "| run | round 1 | after 5 rounds | against non-private | reported ε | noise multipliers z |", "| --- | --- | --- | --- | --- | --- |"]
    for run in runs.values():
        first = next(r for r in run["rounds"] if r["round"] == 1)["test_accuracy"]
        acc, value = _acc(run), _spent(run)
        title = run["mode"] + (f", ε = {run['target_epsilon']:g}" if run.get("target_epsilon") else "")
        z = ", ".join(f"{v:.3f}" for v in run.get("noise_multipliers") or [])
        lines.append(f"| {title} | {100 * first:.2f}% | {100 * acc:.2f}% | {100 * (acc - base):+.2f} | "
                     f"{'' if value is None else f'{value:.2f}'} | {z} |")
    return [*lines, "", "Under record-level DP with a head, each client's ledger holds the head's release (half the budget) and "
            "its DP-SGD steps, calibrated together to the run's ε (the z column lists both multipliers).", ""]


def _dated(lines: list[str], runs: dict) -> list[str]:
    """The table's heading with when its runs were measured (`--only` reruns some and keeps the others)."""
    dates = sorted({run.get("date", "?") for run in runs.values()})
    return [f"{lines[0]} (measured {dates[0]}{f' to {dates[-1]}' if len(dates) > 1 else ''})", *lines[1:]]


def table(results: dict, scale: str) -> list[str]:
    runs = {k.split("|", 1)[1]: v for k, v in results["runs"].items() if k.split("|", 1)[0] == scale}
    if "none" not in runs:
        return []
    return _dated(head_table(runs) if scale == "heads" else _table(runs, scale), runs)


def _table(runs: dict, scale: str) -> list[str]:
    base = _acc(runs["none"])
    lines = [f"### {SCALES[scale]}", "", f"Non-private (ε = ∞, the reference recipe): **{100 * base:.2f}%** after 5 rounds.", "",
             "| mode | ε = 1 | ε = 3 | ε = 8 | reported ε at the end (1 / 3 / 8) | noise multiplier z (1 / 3 / 8) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for mode, title in MODES.items():
        if not any(f"{mode}_{eps:g}" in runs for eps in EPSILONS):
            continue
        cells, spent, noise = [], [], []
        for eps in EPSILONS:
            run = runs.get(f"{mode}_{eps:g}")
            if run is None:
                cells.append("")
                spent.append("")
                noise.append("")
                continue
            acc = _acc(run)
            cells.append(f"{100 * acc:.2f}% ({100 * (acc - base):+.2f})")
            value = _spent(run)
            spent.append("n/a" if value is None else f"{value:.2f}")
            z = run.get("noise_multipliers")
            noise.append(", ".join(f"{v:.3f}" for v in z) if z else "")
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {' / '.join(spent)} | {' / '.join(noise)} |")
    lines += ["", "In brackets: points against non-private. Record-level ε is the largest any client reported for its own "
              "data and z what the clients calibrated (each its own; equal shards give equal z); client-level ε and z are "
              "the coordinator's ledger."]
    central, spread = runs.get("client_3"), runs.get("distributed_3")
    if central and spread:
        lines += ["", f"Distributed DP (the clients add Skellam noise under secure aggregation's masks) calibrates the same z as the "
                  f"coordinator's noise and lands where it does (at chance: with 4 clients, client-level noise drowns the mean "
                  f"either way); a round costs {_median_round(spread):.2f} s against "
                  f"{_median_round(central):.2f} s (ε = 3, rounds 2-5, medians), the price of the secure-aggregation protocol."]
    if "none_dp_recipe" in runs:
        plain = runs["none_dp_recipe"]
        lines += ["", f"DP-SGD's recipe without DP (lr 1.0, batch {plain['server_args'][plain['server_args'].index('--batch-size') + 1]}): "
                  f"{100 * _acc(plain):.2f}%."]
        private = runs.get("record_3")
        if private:
            ratio = _median_round(private) / _median_round(plain)
            lines += [f"Cost of a private round on the cached path (rounds 2-5, medians, same batches): "
                      f"{_median_round(private):.2f} s with DP-SGD at ε = 3 against {_median_round(plain):.2f} s without: "
                      f"**{ratio:.2f}×**."]
    return [*lines, ""]


def plot(results: dict, out: Path) -> str | None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for scale, style in (("reference", "--"), ("all", "-")):
        runs = {k.split("|", 1)[1]: v for k, v in results["runs"].items() if k.split("|", 1)[0] == scale}
        if "none" not in runs:
            continue
        for mode, color in (("record", "tab:blue"), ("client", "tab:red")):
            points = [(eps, _acc(runs[f"{mode}_{eps:g}"])) for eps in EPSILONS if f"{mode}_{eps:g}" in runs]
            if points:
                ax.plot([e for e, _ in points], [100 * a for _, a in points], style, marker="o", color=color,
                        label=f"{MODES[mode]}, {scale}")
                drawn = True
        ax.axhline(100 * _acc(runs["none"]), linestyle=style, color="gray", linewidth=1, label=f"non-private, {scale}")
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(0, 100 * max(_acc(r) for r in results["runs"].values()) + 5)  # the non-private lines are the top
    ax.set_xlabel("ε at δ = 1e-5 (after 5 rounds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10, EfficientNet-Lite0 head on cached features, 4 clients")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)
    return "accuracy_vs_epsilon.png"


def write_report(results: dict, out: Path) -> None:
    m = results.get("machine", {})
    lines = ["# Privacy benchmark results", "",
             f"Measured on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB, GPU: "
             f"{m.get('cuda', 'none')}), torch {m.get('torch', '?')}. Server and 4 clients share these cores. Generated by "
             "`python -m bench.privacy.run` from `results.json`; δ = 1e-5, RDP accountant, 5 rounds, 1 local epoch.", ""]
    for scale in SCALES:
        lines += table(results, scale)
    png = plot(results, out)
    if png:
        lines += [f"![{png}]({png})", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
