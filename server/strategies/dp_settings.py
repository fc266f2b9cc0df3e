"""Client-level DP-FedAvg's flags and settings (server/strategies/client_dp.py), checked, and kept free of torch so
flags load fast. A combination whose guarantee would not hold is refused with one line that says what to change."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section


@dataclass(frozen=True)
class ClientDPSettings:
    clip: float  # C: fixed, or the adaptive clip's starting value
    noise: float = 0.0  # z (noise std / C on the sum); 0: calibrated to target_epsilon at round 1
    target_epsilon: float = 0.0
    max_epsilon: float = 0.0  # 0: no stop
    delta: float = 1e-5
    accountant: str = "rdp"
    rounds: int = 1  # what target_epsilon is spread over
    quantile: float = 0.0  # γ > 0: adaptive clipping
    clip_lr: float = 0.2  # η
    count_noise: float = 0.0  # σ_b; 0: the round's clients / 20
    weighting: str = "uniform"  # uniform | examples


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--client-dp-clip", type=float, default=0.0, help="clip each client's whole update to this L2 norm and add "
                   "Gaussian noise to the mean (0: off; with --client-dp-quantile: the adaptive clip's start)")
    g.add_argument("--client-dp-noise", type=float, default=0.0, help="noise multiplier z: noise std / clip on the sum (0: calibrated "
                   "to --target-epsilon before round 1)")
    g.add_argument("--target-epsilon", type=float, default=0.0, help="client-level: the ε the whole run may reach (calibrates z)")
    g.add_argument("--max-epsilon", type=float, default=0.0, help="client-level: stop the run cleanly before a round that would "
                   "take the federation's ε past this (0: no limit)")
    g.add_argument("--client-dp-quantile", type=float, default=0.0, help="adaptive clipping (Andrew et al. 2021): the share of "
                   "clients whose update should fit the clip, e.g. 0.5 (0: fixed clip)")
    g.add_argument("--client-dp-clip-lr", type=float, default=0.2, help="adaptive clipping: how fast the clip follows the quantile")
    g.add_argument("--client-dp-count-noise", type=float, default=0.0,
                   help="adaptive clipping: std of the noise on the count of unclipped updates (0: clients per round / 20)")
    g.add_argument("--client-dp-weighting", choices=("uniform", "examples"), default="uniform",
                   help="uniform: every client counts the same (noise z*clip/k); examples: weigh by (capped) examples, noise "
                   "z*clip*(the largest weight share)")


SECTION = Section("client-dp", "client-level differential privacy: DP-FedAvg (docs/privacy.md; record-level DP-SGD: training)",
                  add_flags)


_FLAGS = ("client_dp_noise", "target_epsilon", "max_epsilon", "client_dp_quantile", "client_dp_count_noise")


def client_dp_settings(a: argparse.Namespace, train: TrainConfig) -> ClientDPSettings | None:
    if not a.client_dp_clip:
        given = [f"--{f.replace('_', '-')}" for f in _FLAGS if getattr(a, f)]
        if given:
            raise ConfigError(f"{given[0]} is client-level DP's: also give --client-dp-clip (e.g. 1.0). For record-level DP-SGD on "
                              "each client, use --dp-clip with --dp-noise or --dp-epsilon")
        return None
    if min(a.client_dp_clip, a.client_dp_noise, a.target_epsilon, a.max_epsilon, a.client_dp_count_noise) < 0 or a.client_dp_clip_lr <= 0:
        raise ConfigError("--client-dp-clip, --client-dp-noise, --target-epsilon, --max-epsilon and --client-dp-count-noise must be "
                          ">= 0, --client-dp-clip-lr > 0")
    if bool(a.client_dp_noise) == bool(a.target_epsilon):
        raise ConfigError("client-level DP needs exactly one of --client-dp-noise (a fixed noise multiplier) and --target-epsilon "
                          "(the noise is calibrated to it before round 1)")
    if a.target_epsilon and a.max_epsilon and a.max_epsilon < a.target_epsilon:
        raise ConfigError(f"--max-epsilon {a.max_epsilon:g} is below --target-epsilon {a.target_epsilon:g}: the run would stop early")
    if not 0 <= a.client_dp_quantile < 1:
        raise ConfigError(f"--client-dp-quantile must be in (0, 1), got {a.client_dp_quantile}")
    if not 0 < train.dp_delta < 1:
        raise ConfigError(f"--dp-delta must be in (0, 1), got {train.dp_delta}")
    why = "client-level DP clips and noises the plain mean of whole updates"
    if a.aggregation != "mean":
        raise ConfigError(f"--client-dp-clip with --aggregation {a.aggregation}: {why}; its noise is calibrated to the mean's "
                          "sensitivity, which an order-based rule does not have. Use --aggregation mean")
    if a.max_update_norm or a.norm_quantile:
        raise ConfigError("--client-dp-clip is the norm bound under client-level DP: drop --max-update-norm / --norm-quantile")
    if a.secure_aggregation:  # distributed DP: the clients add the noise under the masks (server/secagg/distributed_dp.py)
        if a.client_dp_quantile:
            raise ConfigError("--client-dp-quantile with --secure-aggregation: adaptive clipping needs the share of clipped updates, "
                              "which the masks hide; give a fixed --client-dp-clip")
        if a.client_dp_weighting != "uniform":
            raise ConfigError("--client-dp-weighting examples with --secure-aggregation: the clients' noise is calibrated to updates "
                              "of weight 1 (an example count would be hidden under the masks and scale the sensitivity); use uniform")
        if train.dp_accountant != "rdp":
            raise ConfigError("--dp-accountant pld with --secure-aggregation: the clients' Skellam noise is accounted by its RDP "
                              "bound; use --dp-accountant rdp")
        if a.secagg_clip and a.secagg_clip != a.client_dp_clip:
            raise ConfigError("--secagg-clip with --client-dp-clip: under distributed DP the clients clip to --client-dp-clip; drop "
                              "--secagg-clip")
    if a.over_select:
        raise ConfigError("--over-select asks spare clients in mid-round, which the sampling the accountant composes (k of the "
                          "connected clients, chosen at once) does not allow: drop it under client-level DP")
    return ClientDPSettings(clip=a.client_dp_clip, noise=a.client_dp_noise, target_epsilon=a.target_epsilon, max_epsilon=a.max_epsilon,
                            delta=train.dp_delta, accountant=train.dp_accountant, rounds=a.rounds, quantile=a.client_dp_quantile,
                            clip_lr=a.client_dp_clip_lr, count_noise=a.client_dp_count_noise, weighting=a.client_dp_weighting)
