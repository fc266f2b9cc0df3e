"""The aggregation flags -> StrategySettings, and what the rules need of a round, checked against what the flags let
a round have (server/config.py calls this; a bad value or combination is a ConfigError naming the flag)."""

from __future__ import annotations

import argparse

from common.config import TrainConfig
from common.errors import ConfigError
from server.strategies import OPTIMIZERS, RULES, StrategySettings


def strategy_settings(a: argparse.Namespace, train: TrainConfig) -> StrategySettings:
    if a.aggregation not in RULES:
        raise ConfigError(f"--aggregation {a.aggregation!r}: use one of {', '.join(RULES)}")
    if a.server_optimizer not in OPTIMIZERS:
        raise ConfigError(f"--server-optimizer {a.server_optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    entry = OPTIMIZERS[a.server_optimizer]
    if a.server_lr < 0:
        raise ConfigError(f"--server-lr must be >= 0 (0: the optimizer's default), got {a.server_lr}")
    if not 0 <= a.server_momentum < 1:
        raise ConfigError(f"--server-momentum must be in [0, 1), got {a.server_momentum}")
    adaptive_flags = {"--server-beta1": a.server_beta1, "--server-beta2": a.server_beta2, "--server-tau": a.server_tau}
    given = [flag for flag, value in adaptive_flags.items() if value is not None]
    if given and not entry.adaptive:
        raise ConfigError(f"{given[0]} applies to --server-optimizer adam, yogi or adagrad, not {a.server_optimizer}")
    if a.server_bias_correction and a.server_optimizer != "adam":
        raise ConfigError(f"--server-bias-correction is FedAdam's (as in Flower); --server-optimizer is {a.server_optimizer}")
    defaults = StrategySettings()
    beta1 = defaults.beta1 if a.server_beta1 is None else a.server_beta1
    beta2 = defaults.beta2 if a.server_beta2 is None else a.server_beta2
    tau = defaults.tau if a.server_tau is None else a.server_tau
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"--server-beta1 and --server-beta2 must be in [0, 1), got {beta1} and {beta2}")
    if not tau > 0:
        raise ConfigError(f"--server-tau must be > 0, got {tau}")
    if a.max_update_norm < 0 or a.weight_cap < 0:
        raise ConfigError("--max-update-norm and --weight-cap must be >= 0 (0: off)")
    if not 0 <= a.norm_quantile < 1 or (a.norm_quantile and a.max_update_norm):
        raise ConfigError("--norm-quantile must be in (0, 1), and not given with --max-update-norm (choose a fixed or an adaptive bound)")
    _check_rule(a)
    if a.server_lr:
        lr = a.server_lr
    elif train.algorithm == "fedsgd" and a.server_optimizer == "sgd":
        lr = train.lr  # FedSGD: the server takes the step a centralised SGD would
    else:
        lr = entry.default_lr
    return StrategySettings(rule=a.aggregation, optimizer=a.server_optimizer, lr=lr, momentum=a.server_momentum, beta1=beta1,
                            beta2=beta2, tau=tau, bias_correction=a.server_bias_correction, max_update_norm=a.max_update_norm,
                            norm_quantile=a.norm_quantile, weighting=a.weighting, weight_cap=a.weight_cap, weighted_rule=a.weighted_rule,
                            trim_fraction=a.trim_fraction, byzantine=a.byzantine, krum_select=a.krum_select)


def _check_rule(a: argparse.Namespace) -> None:
    """What the robust rules need of a round, checked against what the flags let a round have."""
    if not 0 <= a.trim_fraction < 0.5:
        raise ConfigError(f"--trim-fraction must be in [0, 0.5), got {a.trim_fraction}")
    if a.byzantine < 0 or a.krum_select < 1:
        raise ConfigError("--byzantine must be >= 0 and --krum-select >= 1")
    min_fit = a.min_fit_clients or min(a.min_clients, a.clients_per_round or a.min_clients)
    needed = {"krum": max(2 * a.byzantine + 3, a.krum_select), "bulyan": 4 * a.byzantine + 3}.get(a.aggregation, 1)
    if min_fit < needed:
        what = f"{a.aggregation} with --byzantine {a.byzantine}" + (f" and --krum-select {a.krum_select}" if a.aggregation == "krum" else "")
        raise ConfigError(f"{what} needs at least {needed} updates a round (n >= {'2f + 3' if a.aggregation == 'krum' else '4f + 3'}), "
                          f"but a round may close with {min_fit}: raise --min-fit-clients (and --min-clients), or lower --byzantine")
    if (a.aggregation == "fltrust") != (a.root_data is not None):
        raise ConfigError("--aggregation fltrust and --root-data go together: FLTrust scores updates against the coordinator's own "
                          "update on its small clean root set")
    if a.root_per_class < 1 or a.max_aggregate_memory <= 0:
        raise ConfigError("--root-per-class must be >= 1 and --max-aggregate-memory > 0")
