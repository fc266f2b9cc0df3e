"""Sections 8-9 of bench/RESULTS.md: 10,000 connected sessions on one coordinator, and the simulation engine."""

from __future__ import annotations


def scale_and_simulation(big: dict, sim: dict) -> list[str]:
    lines: list[str] = []
    if big:
        s, m = big["seconds"], big["machine"]
        lines += [f"## 8. Scale: {big['connected']:,} connected sessions, {big['per_round']:,} a round (EfficientNet-Lite0 head, 51 kB)", "",
                  f"`python -m bench.scale_10k`, measured {m['date']}: {big['drivers']} driver processes (bench/load_clients.py, the real "
                  f"protocol, no training), {big['per_connection']} sessions per TCP connection = {big['connections']:,} connections, "
                  "all on this machine's 2 cores with the coordinator.", "",
                  "| s/round (rounds 2-5) | round 1 s | coordinator RSS before joins / peak MB | threads | updates sent = in round records | joins |",
                  "| --- | --- | --- | --- | --- | --- |",
                  f"| **{s['median']:.2f}** ({s['min']:.2f}-{s['max']:.2f}) | {big['round_1_seconds']:.2f} | "
                  f"{big['server_rss_before_joins_mb']:.0f} / **{big['server_peak_rss_mb']:.0f}** | **{big['server_threads_max']}** | "
                  f"{big['updates_accepted_by_drivers']:,} = {big['updates_in_round_records']:,} | {big['joins']:,} |", ""]
    if sim:
        st, t, m = sim["start"], sim["throughput"], sim["machine"]
        show = sim["showcase"]
        lines += ["## 9. Simulation engine (python -m simulation, EfficientNet-Lite0 head at 64 px, real CIFAR-10)", "",
                  f"`python -m bench.simulate`, measured {sim['measured']} on {m['cpu']}.", "",
                  "| measure | value |", "| --- | --- |",
                  f"| process start to round 1, warm caches (median of 3) | **{st['to_round_1']['median']:.2f} s** "
                  f"(of which `import torch, torchvision, timm` alone: {st['python_imports']['median']:.2f} s) |",
                  f"| 1,000 virtual clients a round, heads trained together | **{t['auto']['seconds']['median']:.2f} s** per round |",
                  f"| the same, one client at a time (`--vectorise off`) | {t['off']['seconds']['median']:.2f} s ({t['vectorised_speedup']:.1f}x slower) |"]
        for name, label in (("global", "showcase, 100 clients (Dirichlet 0.1), 10 a round, 100 rounds, cold caches"),
                            ("personal", "the same with personal heads (`--personal-epochs 1`)")):
            r = show[name]
            last = r["rounds"][-1]
            personal = [x["client_personal_accuracy"] for x in r["rounds"] if x.get("client_personal_accuracy") is not None]
            extra = f"; personal heads on clients' held-out data {100 * personal[-1]:.1f} %" if personal else ""
            lines.append(f"| {label} | **{r['seconds']:.0f} s** in all; final test accuracy {100 * last['test_accuracy']:.1f} %{extra} |")
        lines += ["", "![showcase](results/simulate_showcase.png)", ""]
    return lines
