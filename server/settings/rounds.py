"""How rounds run: who is selected, how long rounds wait, when the coordinator and the clients evaluate."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from fedtl.common.errors import ConfigError
from fedtl.common.plugin_refs import is_plugin
from fedtl.common.sections import Section


@dataclass(frozen=True)
class Schedule:
    rounds: int
    min_clients: int
    clients_per_round: int  # 0: every connected client (unless fraction)
    fraction: float  # > 0: this share of the connected clients
    min_fit_clients: int
    over_select: float
    round_timeout: float
    round_retries: int
    wait_timeout: float  # 0: wait for min_clients forever
    join_grace: float
    finish_grace: float
    eval_every: int
    client_eval_every: int
    max_examples: int
    straggler_wait: float | None = None  # after the quorum answered: seconds to wait for the rest (None: as long as the quorum took, >= 10 s)


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--rounds", type=int, default=3, help="rounds to run")
    g.add_argument("--round-config", default=None, metavar="MODULE:FUNCTION",
                   help="your function (round, recipe) -> settings to change that round, e.g. {'lr': 0.01}: a schedule (docs/api.md)")
    g.add_argument("--min-clients", type=int, default=2, help="connected clients needed before round 1 starts, and for up to a minute before a resumed run's first (later rounds start once their quorum, --min-fit-clients, is connected)")
    g.add_argument("--clients-per-round", type=int, default=0, help="how many clients to select each round (0: all connected)")
    g.add_argument("--fraction", type=float, default=0.0, help="select this share of the connected clients instead (0 < F <= 1)")
    g.add_argument("--min-fit-clients", type=int, default=0,
                   help="a round's quorum: the answers needed to aggregate it (0: with --aggregation mean, two thirds of "
                        "--min-clients, or of --clients-per-round when fewer, rounded up; with a robust rule, all of them, "
                        "which its guarantees count on)")
    g.add_argument("--straggler-wait", type=float, default=None,
                   help="once a round's quorum answered, wait at most this many seconds for the rest, then close it (default: "
                        "as long again as the quorum took, at least 10 s): one silent client no longer holds every round to "
                        "--round-timeout")
    g.add_argument("--over-select", type=float, default=0.0, help="select this much more (e.g. 0.25) and close at the target count")
    g.add_argument("--round-timeout", type=float, default=600.0, help="seconds a round waits for updates")
    g.add_argument("--round-retries", type=int, default=2, help="re-run a round that got too few answers this many times, then stop")
    g.add_argument("--wait-timeout", type=float, default=0.0, help="give up if the clients a round needs have not connected after this many seconds (0: wait)")
    g.add_argument("--join-grace", type=float, default=2.0, help="before round 1, wait until no client joined for this long")
    g.add_argument("--finish-grace", type=float, default=10.0, help="after the last round, wait this long for clients to hang up")
    g.add_argument("--max-examples", type=int, default=10_000_000, help="refuse updates claiming more examples than this")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate on the test split every N rounds (0: never)")
    g.add_argument("--client-eval-every", type=int, default=0, help="federated evaluation on clients' held-out slices every N rounds")
    g.add_argument("--eval-batch-size", type=int, default=0, help="0: picked for the image size (64 at 64 px, 256 at 32 px)")
    g.add_argument("--metric-aggregation", default="", metavar="package.module:function",
                   help="your own function over every answering client's (examples, metrics) -> a dict of numbers, logged in each "
                        "round record as client_metrics (docs/api.md)")


SECTION = Section("rounds", "rounds", add_flags)


def min_fit(a: argparse.Namespace) -> int:
    """The answers a round needs (its quorum): --min-fit-clients, else a share of --min-clients (at most the clients a
    round selects): two thirds under the plain mean, where a round that closes without a silent client loses only its
    update; all of them under a robust rule, whose tolerance of attackers is stated in counts of updates."""
    base = min(a.min_clients, a.clients_per_round or a.min_clients)
    return int(a.min_fit_clients or (math.ceil(2 * base / 3) if a.aggregation == "mean" else base))


def schedule(a: argparse.Namespace) -> Schedule:
    if a.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {a.rounds}")
    if a.min_clients < 1:
        raise ConfigError(f"--min-clients must be >= 1, got {a.min_clients}")
    if a.clients_per_round < 0:
        raise ConfigError(f"--clients-per-round must be >= 0 (0: all connected), got {a.clients_per_round}")
    if not 0 <= a.fraction <= 1 or (a.fraction and a.clients_per_round):
        raise ConfigError("--fraction must be in (0, 1], and not combined with --clients-per-round")
    if a.min_fit_clients < 0:
        raise ConfigError(f"--min-fit-clients must be >= 0 (0: same as --min-clients), got {a.min_fit_clients}")
    fit = min_fit(a)
    if a.clients_per_round and fit > a.clients_per_round:
        raise ConfigError(f"--min-fit-clients {fit} exceeds --clients-per-round {a.clients_per_round}")
    if a.over_select < 0:
        raise ConfigError("--over-select must be >= 0")
    if a.over_select and not (a.clients_per_round or a.fraction):
        raise ConfigError("--over-select needs --clients-per-round or --fraction: when every connected client is selected "
                          "there is no one to add")
    if not a.round_timeout > 0:
        raise ConfigError("--round-timeout must be > 0 seconds")
    if a.straggler_wait is not None and a.straggler_wait < 0:
        raise ConfigError(f"--straggler-wait must be >= 0 seconds, got {a.straggler_wait:g}")
    for flag, value in (("--round-retries", a.round_retries), ("--wait-timeout", a.wait_timeout), ("--join-grace", a.join_grace),
                        ("--finish-grace", a.finish_grace), ("--eval-every", a.eval_every), ("--client-eval-every", a.client_eval_every),
                        ("--eval-batch-size", a.eval_batch_size)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    if a.max_examples < 1:
        raise ConfigError(f"--max-examples must be >= 1, got {a.max_examples}")
    if a.client_eval_every and a.holdout_fraction == 0:
        raise ConfigError("--client-eval-every needs --holdout-fraction > 0 (clients evaluate on a held-out slice)")
    return Schedule(
        rounds=a.rounds, min_clients=a.min_clients, clients_per_round=a.clients_per_round, fraction=a.fraction,
        min_fit_clients=fit, over_select=a.over_select, round_timeout=a.round_timeout, round_retries=a.round_retries,
        wait_timeout=a.wait_timeout, join_grace=a.join_grace, finish_grace=a.finish_grace, eval_every=a.eval_every,
        client_eval_every=a.client_eval_every, max_examples=a.max_examples, straggler_wait=a.straggler_wait,
    )


def metric_aggregation(a: argparse.Namespace) -> str:
    if a.metric_aggregation and not is_plugin(a.metric_aggregation):
        raise ConfigError(f"--metric-aggregation {a.metric_aggregation[:80]!r}: name a function as package.module:function")
    return str(a.metric_aggregation)
