"""Statistics rounds: a round whose clients send sums of their data's statistics instead of training
(server/statistics_rounds.py). Round 1 can build a closed-form head (`--head-init`); the last round can pool
BatchNorm's statistics over every client's data (`--batchnorm`).

`auto` (both defaults) uses them exactly where they are exact and safe with the rest of the configuration: plain
FedAvg's weighted mean and no differential privacy (the statistics are not noised, and no robust rule can protect a
sum); the head with a frozen backbone (`--train head`), BatchNorm pooling when the trained part has BatchNorm layers
whose statistics are shared (not `--fedbn`) and there are rounds to train before it. Under `--secure-aggregation` the
head's statistics are masked like any update; they need a range, so each example's features are clipped to
`--head-feature-clip` (the head runs there only when it is given); BatchNorm pooling stays in the clear, so not there.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

from fedtl.common.config import HEAD_KINDS, TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section
from fedtl.server.secagg import SecAggSettings
from fedtl.server.strategies import StrategySettings

HEAD_CHOICES = ("auto", "none", *HEAD_KINDS)
BATCHNORM_CHOICES = ("auto", "pool", "average")
AUTO_BATCHNORM_ROUNDS = 4
# Under record-level DP the head's statistics spend this share of --dp-epsilon (all of it in a one-round run); the
# clients calibrate the DP-SGD rounds so that the whole run spends exactly --dp-epsilon (client/privacy.py).
HEAD_EPSILON_SHARE = 0.5


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--head-init", default="auto", choices=HEAD_CHOICES,
                   help="round 1 builds the head in closed form from every connected client's feature statistics, exactly as "
                        "on the pooled data: ridge (least squares, ~6.6 MB from each client for a 1280-feature backbone), "
                        "ncm (class means, ~100 kB), none (round 1 trains like the others); auto: ridge with a frozen backbone "
                        "(--train head), plain FedAvg and no DP (under secure aggregation: given --head-feature-clip), else none")
    g.add_argument("--head-ridge", type=float, default=0.1,
                   help="the ridge head's regularisation, relative to the mean squared feature value")
    g.add_argument("--batchnorm", default="auto", choices=BATCHNORM_CHOICES,
                   help="pool: the last round sets every trained BatchNorm layer's running statistics from all clients' data "
                        "(one forward pass each; exact for the first layer) instead of training; average: FedAvg's mean of the "
                        "clients' running statistics; auto: pool when trained BatchNorm layers are shared, --rounds >= 4, plain "
                        "FedAvg and neither secure aggregation nor DP")
    g.add_argument("--head-feature-clip", type=float, default=0.0,
                   help="the head's statistics round clips each example's features to this L2 norm (0: not clipped); needed "
                        "with --secure-aggregation, where it bounds the masked statistics' range: set it at or above the "
                        "features' largest norm (e.g. 50 for EfficientNet-Lite0 at 128 px on CIFAR-10)")
    g.add_argument("--statistics-clients", type=int, default=100,
                   help="a statistics round asks every connected client, up to this many (a seeded sample beyond)")


SECTION = Section("statistics", "statistics rounds: closed-form head, BatchNorm (docs/learning.md)", add_flags)


@dataclass(frozen=True)
class StatisticsPlan:
    head: str = ""  # "" (none), "ridge" or "ncm": round 1
    ridge_lambda: float = 0.1
    head_auto: bool = False  # chosen by --head-init auto: a model whose head is not Linear quietly goes without
    batchnorm: bool = False  # the last round pools BatchNorm statistics
    batchnorm_auto: bool = False  # chosen by auto: a model with no shared BatchNorm layer quietly goes without
    clients: int = 100  # --statistics-clients: the most clients a statistics round asks
    feature_clip: float = 0.0  # --head-feature-clip: the head's statistics are of features clipped to this norm
    secure: SecAggSettings | None = None  # the head's statistics are masked (--secure-aggregation)
    dp_share: float = 0.0  # record-level DP: the head's statistics are noised, spending this share of --dp-epsilon

    def round_config(self, train: TrainConfig, kind: str) -> TrainConfig:
        """A statistics round's recipe: the same, asking for `kind` instead of training (on the images as they are); under
        record-level DP, the head's share of the run's budget (the clients calibrate the later DP-SGD rounds around it)."""
        head = kind in HEAD_KINDS
        epsilon = train.dp_epsilon * self.dp_share if head and self.dp_share else train.dp_epsilon
        return replace(train, statistics=kind, augment=False, feature_clip=self.feature_clip if head else 0.0, dp_epsilon=epsilon)


def _conflicts(train: TrainConfig, strategy: StrategySettings, feature_clip: float, kind: str) -> list[str]:
    """Why pooled statistics of `kind` (ridge, ncm or batchnorm) are not right with these settings ([]: they are)."""
    out, head = [], kind in HEAD_KINDS
    if strategy.secure is not None and not head:
        out.append("--secure-aggregation (BatchNorm's statistics would leave clients unmasked)")
    elif strategy.secure is not None and not feature_clip:
        out.append("--secure-aggregation without --head-feature-clip (masked statistics need a range: each example's "
                   "features are clipped to that norm; e.g. --head-feature-clip 50 for EfficientNet-Lite0)")
    if strategy.client_dp is not None:
        out.append("client-level DP (the statistics are not noised for it)")
    if train.private and not head:
        out.append("record-level DP (BatchNorm's statistics are not noised)")
    elif train.private and kind == "ridge":
        out.append("record-level DP with a ridge head (its Gram matrix's noise costs 6-11 points at ε = 3: docs/learning.md); "
                   "--head-init ncm is noised at almost no cost")
    elif train.private and strategy.secure is not None:
        out.append("record-level DP with --secure-aggregation (noised statistics have no fixed range to mask in)")
    elif train.private and not feature_clip:
        out.append("record-level DP without --head-feature-clip (the noise is calibrated to each example's clipped features)")
    if strategy.rule != "mean":
        out.append(f"--aggregation {strategy.rule} (a sum of statistics has no robust form: one client could steer it)")
    if train.algorithm != "fedavg":
        out.append(f"--algorithm {train.algorithm}")
    return out


def settings(a: argparse.Namespace, train: TrainConfig, strategy: StrategySettings) -> StatisticsPlan:
    if not a.head_ridge > 0:
        raise ConfigError(f"--head-ridge must be > 0, got {a.head_ridge}")
    if a.statistics_clients < 1:
        raise ConfigError(f"--statistics-clients must be >= 1, got {a.statistics_clients}")
    if not (a.head_feature_clip >= 0 and math.isfinite(a.head_feature_clip)):
        raise ConfigError(f"--head-feature-clip must be a finite number >= 0, got {a.head_feature_clip}")
    if a.head_init == "auto":
        # not under record-level DP: at 128 px over 50,000 images a DP-SGD round beat the noised class-mean head it
        # would replace (bench/privacy, "closed-form heads": ε = 3, 77.15 % against 75.50 %; ε = 1, equal)
        usable = a.train_policy.strip() == "head" and not train.private and not _conflicts(train, strategy, a.head_feature_clip, "ridge")
        head, head_auto = ("ridge" if usable else ""), True
    elif a.head_init == "none":
        head, head_auto = "", False
    elif conflicts := _conflicts(train, strategy, a.head_feature_clip, a.head_init):
        raise ConfigError(f"--head-init {a.head_init} does not combine with {'; '.join(conflicts)}: use --head-init none")
    else:
        head, head_auto = a.head_init, False
    if a.head_feature_clip and not head:
        raise ConfigError("--head-feature-clip applies to a closed-form head's round (--head-init ridge or ncm)")
    conflicts = _conflicts(train, strategy, a.head_feature_clip, "batchnorm")
    if a.batchnorm == "auto":
        # at least 3 rounds to train before it: measured on Lite0 (bench/learning), pooling after 4 rounds beat a 5th round of training
        batchnorm = a.rounds >= AUTO_BATCHNORM_ROUNDS and not a.fedbn and not conflicts and a.train_policy.strip() != "head"
        batchnorm_auto = True
    elif a.batchnorm == "average":
        batchnorm, batchnorm_auto = False, False
    else:
        if conflicts:
            raise ConfigError(f"--batchnorm pool does not combine with {'; '.join(conflicts)}: use --batchnorm average")
        if a.fedbn:
            raise ConfigError("--batchnorm pool with --fedbn: FedBN keeps BatchNorm on the clients; leave out one of them")
        if a.rounds < 2 + bool(head):
            raise ConfigError(f"--batchnorm pool takes the last of --rounds {a.rounds}, leaving no round to train: raise --rounds")
        batchnorm, batchnorm_auto = True, False
    share = (HEAD_EPSILON_SHARE if a.rounds > 1 else 1.0) if head and train.private else 0.0
    return StatisticsPlan(head, a.head_ridge, head_auto, batchnorm, batchnorm_auto, a.statistics_clients, a.head_feature_clip,
                          strategy.secure, share)


def private_rounds(a: argparse.Namespace, plan: StatisticsPlan, train: TrainConfig) -> TrainConfig:
    """Under record-level DP, a noised head's round is not one of the DP-SGD rounds the budget is spread over (unless
    --dp-rounds says how many)."""
    if plan.dp_share and not a.dp_rounds:
        return replace(train, dp_rounds=max(1, a.rounds - 1))
    return train


# After a ridge head on a frozen backbone the head is already the pooled least-squares optimum; plain FedAvg rounds
# then mostly move it towards each round's few clients. Measured (bench/learning/statistics.py; 50,000 images, 100
# Dirichlet-0.1 clients, 10 a round, 20 rounds, client lr 0.003): server lr 1 fell from 78.30 % to 74.36 % (final
# 76.61 %), 0.3 fell 0.64 (final 78.10 %), 0.1 fell 0.2 (final 78.30 %); client lr 0.001 and FedAvgM (0.1, momentum 0.9)
# fell 2.1 and 1.6. With the simulator's default client lr 0.01 (20 clients, 2,000 images, Dirichlet 0.1), 0.3 fell 1.4
# points after round 3 and 0.1 fell 0.6.
SERVER_LR_AFTER_RIDGE = 0.1


def after_head(a: argparse.Namespace, plan: StatisticsPlan, strategy: StrategySettings) -> StrategySettings:
    """The server step after a closed-form ridge head on a frozen backbone, unless --server-lr says otherwise."""
    if plan.head == "ridge" and not a.server_lr and strategy.optimizer == "sgd" and a.train_policy.strip() == "head":
        return replace(strategy, lr=SERVER_LR_AFTER_RIDGE)
    return strategy
