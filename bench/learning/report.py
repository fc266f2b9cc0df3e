"""Turn bench/learning results into RESULTS.md tables and PNG plots (no numbers are typed in by hand)."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedtl.server.strategies import OPTIMIZERS


def _cache_note(record: dict) -> str:
    """Clients' cache use in a round record (older records held it as text in `client_feature_cache`)."""
    if "client_feature_cache" in record:
        return record["client_feature_cache"]
    built = record.get("client_cache_build_seconds")
    return f"{record.get('clients_cached', 0)}/{record.get('answered', 0)}" + (f" (built in up to {built:.2f}s)" if built is not None else "")


def _eval_cache_note(record: dict) -> str:
    if "feature_cache" in record:
        return record["feature_cache"]
    if not record.get("eval_cache_used"):
        return "off"
    built = record.get("eval_cache_build_seconds")
    return "on" if built is None else f"on (built in {built:.2f}s)"


def _acc(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _runs(results: dict) -> dict[str, list[dict]]:
    return {name: [r for r in run["rounds"]] for name, run in results["federated"].items()}


def _final(rounds: list[dict], key: str = "test_accuracy") -> float | None:
    return rounds[-1].get(key) if rounds else None


def time_to_accuracy(results: dict) -> list[str]:
    runs = _runs(results)
    if not {"head_cache_on", "head_cache_off"} <= runs.keys():
        return []
    on, off = runs["head_cache_on"], runs["head_cache_off"]
    full = runs.get("full_pretrained", [])
    lines = ["## Time to accuracy: the reference configuration, feature cache on vs off", "",
             "Seconds since the start of round 1 (`elapsed`), the round's own duration, and test accuracy on the 2,000 test images.", "",
             "| round | acc, cache on | acc, cache off | round s, on | round s, off | elapsed s, on | elapsed s, off | bytes moved (on = off) | acc, --train all | elapsed s, all |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {name: {r["round"]: r for r in rs} for name, rs in (("on", on), ("off", off), ("all", full))}
    for n in sorted(by["on"]):
        a, b, c = by["on"][n], by["off"].get(n, {}), by["all"].get(n, {})
        lines.append(f"| {n} | {_acc(a.get('test_accuracy'))} | {_acc(b.get('test_accuracy'))} | {a.get('seconds', 0):.2f} | "
                     f"{b.get('seconds', 0):.2f} | {a.get('elapsed', 0):.1f} | {b.get('elapsed', 0):.1f} | "
                     f"{(a.get('bytes_down', 0) + a.get('bytes_up', 0)) / 1e6:.2f} MB | {_acc(c.get('test_accuracy'))} | {c.get('elapsed', 0):.1f} |")
    later_on = [by["on"][n]["seconds"] for n in range(2, 6) if n in by["on"]]
    later_off = [by["off"][n]["seconds"] for n in range(2, 6) if n in by["off"]]
    init_on, init_off = by["on"][0]["eval_seconds"], by["off"][0]["eval_seconds"]
    total_on, total_off = by["on"][5]["elapsed"] + init_on, by["off"][5]["elapsed"] + init_off
    diffs = [abs(by["on"][n]["test_accuracy"] - by["off"][n]["test_accuracy"]) for n in by["on"] if n in by["off"]]
    builds = [_cache_note(r) for r in on if r["round"] == 1]
    lines += ["",
              f"- Rounds 2-5 with the cache: max {max(later_on):.2f} s, median {statistics.median(later_on):.2f} s; without: median "
              f"{statistics.median(later_off):.2f} s -> **{statistics.median(later_off) / statistics.median(later_on):.0f}x** less per round "
              f"(worst case {min(off_s / on_s for off_s, on_s in zip(later_off, later_on)):.0f}x).",
              f"- Whole run, cache builds included (server's initial evaluation + 5 rounds): {total_on:.1f} s vs {total_off:.1f} s -> "
              f"**{total_off / total_on:.1f}x** faster; from the start of round 1 (the clients' builds included): "
              f"{by['on'][5]['elapsed']:.1f} s vs {by['off'][5]['elapsed']:.1f} s -> **{by['off'][5]['elapsed'] / by['on'][5]['elapsed']:.1f}x**. "
              f"One-off builds: server test features in round 0 ({_eval_cache_note(by['on'][0])}), clients in round 1 "
              f"({builds[0] if builds else 'n/a'}).",
              "- Why the whole run cannot gain much more here: building the caches *is* one uncached pass (2,000 test + 5,000 "
              "training images through the frozen backbone); without the cache every round repeats it, 2,000 + 5 x 7,000 = 37,000 "
              "forward passes against 7,000, so 5 rounds can be at most ~5.3x faster even if nothing else cost time. On this "
              "shared 2-core machine the rest is start-up (4 clients importing torch and decoding their shards while the server "
              "builds its test features) that both runs pay alike. Every further round costs 0.1 s instead of ~5 s.",
              f"- Largest per-round accuracy difference between cache on and off: **{100 * max(diffs):.2f} points**.", ""]
    return lines


def pretraining(results: dict) -> list[str]:
    runs = _runs(results)
    rows = [(n, runs[n]) for n in ("full_pretrained", "head_cache_on", "full_random") if n in runs]
    if not rows:
        return []
    lines = ["## How much does pretraining buy?", "", "Same architecture (EfficientNet-Lite0), same data, 5 rounds, 4 clients IID.", "",
             "| model | test acc by round (0..5) | final | bytes, round 1 | bytes per round after |", "| --- | --- | --- | --- | --- |"]
    for name, rs in rows:
        accs = " / ".join(f"{100 * r['test_accuracy']:.1f}" for r in rs)
        r1 = next((r for r in rs if r["round"] == 1), {})
        r2 = next((r for r in rs if r["round"] == 2), {})
        lines.append(f"| {results['federated'][name]['description']} | {accs} | **{_acc(_final(rs))}** | "
                     f"{(r1.get('bytes_down', 0) + r1.get('bytes_up', 0)) / 1e6:.1f} MB | {(r2.get('bytes_down', 0) + r2.get('bytes_up', 0)) / 1e6:.2f} MB |")
    if "full_pretrained" in runs and "full_random" in runs:
        gap = _final(runs["full_pretrained"]) - _final(runs["full_random"])  # type: ignore[operator]
        lines += ["", f"- Pretrained beats random init by **{100 * gap:.1f} points** at equal rounds (full fine-tuning both)."]
    if "full_pretrained" in runs and "head_cache_on" in runs:
        full2 = next(r for r in runs["full_pretrained"] if r["round"] == 2)
        head2 = next(r for r in runs["head_cache_on"] if r["round"] == 2)
        ratio = (full2["bytes_down"] + full2["bytes_up"]) / (head2["bytes_down"] + head2["bytes_up"])
        lines += [f"- Head-only rounds after the first move **{ratio:.0f}x** fewer bytes than full rounds "
                  "(the frozen backbone is sent once and then named by its digest)."]
    return lines + [""]


def non_iid(results: dict) -> list[str]:
    runs = _runs(results)
    names = [n for n in ("iid_full_eval", "dirichlet_full", "dirichlet_fedprox", "dirichlet_fedbn", "dirichlet_head_personal") if n in runs]
    if not names:
        return []
    lines = ["## IID vs non-IID (Dirichlet alpha = 0.5), FedProx, FedBN, personal heads", "",
             "Clients keep 10% of their shard as a held-out slice; they evaluate the global model on it before training "
             "(federated evaluation) and, with personal heads, their personalised model too.", "",
             "| run | server test acc (final) | clients' held-out acc, global model (final) | personalised (final) |", "| --- | --- | --- | --- |"]
    for n in names:
        rs = runs[n]
        lines.append(f"| {results['federated'][n]['description']} | {_acc(_final(rs))} | {_acc(_final(rs, 'client_eval_accuracy'))} | "
                     f"{_acc(_final(rs, 'client_personal_accuracy'))} |")
    return lines + ["", "With FedBN the server's copy keeps the pretrained BatchNorm statistics (each client has its own), so the "
                    "server's test accuracy understates it; the clients' held-out accuracy is the fair measure there.", ""]


def centralised(results: dict) -> list[str]:
    runs = _runs(results)
    cent = results.get("centralised", {})
    pairs = [("head", "head_cache_on"), ("all", "full_pretrained")]
    rows = [(p, f) for p, f in pairs if p in cent and f in runs]
    if not rows:
        return []
    lines = ["## The price of federation: federated vs centralised at the same number of epochs", "",
             "Centralised: one model trained on the union of the 4 shards (5,000 images), same recipe, 5 epochs, one optimizer. "
             "Federated: 5 rounds x 1 local epoch on each shard (every image seen 5 times too).", "",
             "| fine-tuning | centralised acc by epoch | federated acc by round | gap (final) |", "| --- | --- | --- | --- |"]
    for policy, fed in rows:
        c = cent[policy]["history"]
        f = runs[fed]
        gap = c[-1]["test_accuracy"] - f[-1]["test_accuracy"]
        by_epoch = " / ".join(f"{100 * h['test_accuracy']:.1f}" for h in c)
        by_round = " / ".join(f"{100 * r['test_accuracy']:.1f}" for r in f)
        lines.append(f"| {policy} | {by_epoch} | {by_round} | **{100 * gap:+.2f} points** |")
    return lines + [""]


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(results)
    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("full_pretrained", "head_cache_on", "full_random", "dirichlet_full", "dirichlet_fedprox"):
        if name in runs:
            ax.plot([r["round"] for r in runs[name]], [100 * r["test_accuracy"] for r in runs[name]], marker="o", label=results["federated"][name]["description"])
    for policy, style in (("all", "--"), ("head", ":")):
        if policy in results.get("centralised", {}):
            h = results["centralised"][policy]["history"]
            ax.plot([x["epoch"] for x in h], [100 * x["test_accuracy"] for x in h], style, label=f"centralised, train {policy} (x = epoch)")
    ax.set_xlabel("round"), ax.set_ylabel("test accuracy (%)"), ax.grid(alpha=0.3), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "accuracy_vs_round.png", dpi=120), plt.close(fig)
    made.append("accuracy_vs_round.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("full_pretrained", "head_cache_on"):
        if name in runs:
            rs = [r for r in runs[name] if r["round"] > 0]
            ax.plot([r["round"] for r in rs], [(r["bytes_down"] + r["bytes_up"]) / 1e6 for r in rs], marker="o", label=results["federated"][name]["description"])
    ax.set_yscale("log"), ax.set_xlabel("round"), ax.set_ylabel("MB moved (down + up, 4 clients)"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "bytes_vs_round.png", dpi=120), plt.close(fig)
    made.append("bytes_vs_round.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("head_cache_on", "head only, cache on"), ("head_cache_off", "head only, cache off"), ("full_pretrained", "--train all")):
        if name in runs:
            rs = runs[name]
            start = rs[0].get("eval_seconds", 0.0)  # the initial evaluation (server cache build) happens before round 1
            ax.plot([0.0] + [start + r["elapsed"] for r in rs[1:]], [100 * r["test_accuracy"] for r in rs], marker="o", label=label)
    ax.set_xlabel("seconds (initial evaluation + rounds)"), ax.set_ylabel("test accuracy (%)"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "time_to_accuracy.png", dpi=120), plt.close(fig)
    made.append("time_to_accuracy.png")
    return made


def server_optimizers(results: dict) -> list[str]:
    """The reference run under each server optimizer at its default --server-lr (none must diverge)."""
    fed = results.get("federated", {})
    rows = [("sgd (FedAvg)", fed.get("head_cache_on"))]
    rows += [(name, fed.get(f"head_server_{name}")) for name in ("avgm", "adam", "yogi", "adagrad")]
    rows = [(name, run) for name, run in rows if run]
    if len(rows) < 2:
        return []
    lines = ["## Server optimizers at their default learning rates", "",
             "The reference run (head only, feature cache) with `--server-optimizer X` and no `--server-lr`: each optimizer's "
             "registered default (server/strategies/__init__.py).", "",
             "| server optimizer | default --server-lr | test loss by round | final test acc |", "| --- | --- | --- | --- |"]
    for name, run in rows:
        lr = f"{OPTIMIZERS[name.split()[0]].default_lr:g}"
        losses = " / ".join(f"{r['test_loss']:.2f}" for r in run["rounds"] if r.get("test_loss") is not None)
        lines.append(f"| {name} | {lr} | {losses} | {_acc(run['rounds'][-1].get('test_accuracy'))} |")
    return [*lines, ""]


def secure_aggregation(results: dict) -> list[str]:
    """The reference run with and without secure aggregation: the cost per round and in accuracy."""
    fed = results.get("federated", {})
    plain, secure = fed.get("head_cache_on"), fed.get("head_secure")
    if not plain or not secure:
        return []
    lines = ["## Secure aggregation on the reference run", "",
             "`--secure-aggregation --max-update-norm 10` (SecAgg+ over all 4 clients, 24-bit fixed point) against the same run "
             "in the clear. Rounds 2-5 (round 1 also builds the clients' feature caches).", "",
             "| run | seconds per round (rounds 2-5) | clipped updates | final test acc |", "| --- | --- | --- | --- |"]
    for name, run in (("plain", plain), ("secure", secure)):
        later = [r for r in run["rounds"] if r["round"] >= 2]
        per_round = " / ".join(f"{r['seconds']:.2f}" for r in later)
        clipped = sum(r.get("clipped", 0) for r in run["rounds"])
        lines.append(f"| {name} | {per_round} | {clipped} | {_acc(run['rounds'][-1].get('test_accuracy'))} |")

    def median(run: dict) -> float:
        return statistics.median(r["seconds"] for r in run["rounds"] if r["round"] >= 2)

    gap = 100 * abs((secure["rounds"][-1].get("test_accuracy") or 0) - (plain["rounds"][-1].get("test_accuracy") or 0))
    lines += ["", f"Secure aggregation adds **{median(secure) - median(plain):+.2f} s** per round (medians, same run) and moves "
              f"final accuracy by **{gap:.2f} points**."]
    return [*lines, ""]


def write_report(results: dict, out: Path) -> None:
    m = results.get("machine", {})
    lines = ["# Learning benchmark results", "",
             f"Measured {m.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB, GPU: {m.get('cuda', 'none')}), "
             f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, grpcio {m.get('grpcio', '?')}. Server and 4 clients share these cores.",
             "Generated by `python -m bench.learning.run` from `results.json`.", ""]
    for section in (time_to_accuracy, pretraining, centralised, non_iid, server_optimizers, secure_aggregation):
        lines += section(results)
    for png in plots(results, out):
        lines += [f"![{png}]({png})", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
