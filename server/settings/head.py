"""`--head-init`: whether round 1 builds a closed-form head from the clients' feature statistics (server/head_init.py).

`auto` (the default) uses the ridge head exactly where it is exact and safe with the rest of the configuration: a
frozen backbone (`--train head`), plain FedAvg's weighted mean, and no secure aggregation or differential privacy
(the statistics are sent in the clear, and no robust rule can protect a sum).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from fedtl.common.config import HEAD_KINDS, TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section
from fedtl.server.strategies import StrategySettings

CHOICES = ("auto", "none", *HEAD_KINDS)


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--head-init", default="auto", choices=CHOICES,
                   help="round 1 builds the head in closed form from every connected client's feature statistics, exactly as "
                        "on the pooled data: ridge (least squares, ~3.3 MB from each client for a 1280-feature backbone), "
                        "ncm (class means, ~100 kB), none (round 1 trains like the others); auto: ridge with a frozen backbone "
                        "(--train head), plain FedAvg and neither secure aggregation nor DP, else none")
    g.add_argument("--head-ridge", type=float, default=0.1,
                   help="the ridge head's regularisation, relative to the mean squared feature value")
    g.add_argument("--head-clients", type=int, default=100,
                   help="round 1 asks every connected client for its statistics, up to this many (a seeded sample beyond)")


SECTION = Section("head", "closed-form head (round 1)", add_flags)


@dataclass(frozen=True)
class HeadInit:
    kind: str  # "" (none), "ridge" or "ncm"
    ridge_lambda: float = 0.1
    auto: bool = False  # chosen by --head-init auto: a model whose head is not Linear quietly goes without
    clients: int = 100  # --head-clients: the most clients round 1 asks

    def round_config(self, train: TrainConfig) -> TrainConfig:
        """Round 1's recipe: the same, asking for statistics instead of training."""
        return replace(train, head_statistics=self.kind)


def _conflicts(train: TrainConfig, strategy: StrategySettings) -> list[str]:
    """Why pooled statistics are not the right first round with these settings ([]: they are)."""
    out = []
    if strategy.secure is not None:
        out.append("--secure-aggregation (the statistics would leave clients unmasked)")
    if strategy.client_dp is not None or train.private:
        out.append("differential privacy (the statistics are not noised)")
    if strategy.rule != "mean":
        out.append(f"--aggregation {strategy.rule} (a sum of statistics has no robust form: one client could steer the head)")
    if train.algorithm != "fedavg":
        out.append(f"--algorithm {train.algorithm}")
    return out


def settings(a: argparse.Namespace, train: TrainConfig, strategy: StrategySettings) -> HeadInit:
    if not a.head_ridge > 0:
        raise ConfigError(f"--head-ridge must be > 0, got {a.head_ridge}")
    if a.head_clients < 1:
        raise ConfigError(f"--head-clients must be >= 1, got {a.head_clients}")
    conflicts = _conflicts(train, strategy)
    if a.head_init == "auto":
        frozen = a.train_policy.strip() == "head"
        return HeadInit("ridge" if frozen and not conflicts else "", a.head_ridge, auto=True, clients=a.head_clients)
    if a.head_init == "none":
        return HeadInit("", a.head_ridge, clients=a.head_clients)
    if conflicts:
        raise ConfigError(f"--head-init {a.head_init} does not combine with {'; '.join(conflicts)}: use --head-init none")
    return HeadInit(a.head_init, a.head_ridge, clients=a.head_clients)
