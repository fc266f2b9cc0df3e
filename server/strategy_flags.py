"""The aggregation flags -> StrategySettings, and what the rules need of a round, checked against what the flags let
a round have (server/config.py calls this; a bad value or combination is a ConfigError naming the flag)."""

from __future__ import annotations

import argparse

from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.common.plugin_refs import is_plugin
from fedtl.common.secagg.fixedpoint import MAX_MODULUS_BITS, capacity_bits
from fedtl.common.secagg.graph import effective_degree
from fedtl.common.secagg.params import default_threshold, problem
from fedtl.server.privacy_flags import client_dp_settings
from fedtl.server.secagg import SecAggSettings
from fedtl.server.strategies import OPTIMIZERS, RULES, StrategySettings

_SECAGG_FLAGS = ("secagg_neighbours", "secagg_threshold", "secagg_clip", "secagg_max_weight")


def strategy_settings(a: argparse.Namespace, train: TrainConfig) -> StrategySettings:
    if a.aggregation not in RULES and not is_plugin(a.aggregation):
        raise ConfigError(f"--aggregation {a.aggregation!r}: use one of {', '.join(RULES)}, or your own package.module:Class")
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
    secure = _secure(a)
    if a.server_lr:
        lr = a.server_lr
    elif train.algorithm == "fedsgd" and a.server_optimizer == "sgd":
        lr = train.lr  # FedSGD: the server takes the step a centralised SGD would
    else:
        lr = entry.default_lr
    return StrategySettings(rule=a.aggregation, optimizer=a.server_optimizer, lr=lr, momentum=a.server_momentum, beta1=beta1,
                            beta2=beta2, tau=tau, bias_correction=a.server_bias_correction, max_update_norm=a.max_update_norm,
                            norm_quantile=a.norm_quantile, weighting=a.weighting, weight_cap=a.weight_cap, weighted_rule=a.weighted_rule,
                            trim_fraction=a.trim_fraction, byzantine=a.byzantine, krum_select=a.krum_select, secure=secure,
                            client_dp=client_dp_settings(a, train))


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


def _secure(a: argparse.Namespace) -> SecAggSettings | None:
    """Secure aggregation's settings, refusing what cannot work with it or would not be safe."""
    if not a.secure_aggregation:
        given = [f"--{f.replace('_', '-')}" for f in _SECAGG_FLAGS if getattr(a, f)] + (["--secagg-bits"] if a.secagg_bits != 24 else [])
        if given:
            raise ConfigError(f"{given[0]} applies with --secure-aggregation")
        return None
    composes = ("it composes with --aggregation mean, every --server-optimizer and a fixed norm bound (--max-update-norm), "
                "which clients apply before masking")
    if a.aggregation != "mean":
        raise ConfigError(f"--secure-aggregation hides each update from the coordinator, so --aggregation {a.aggregation} (which "
                          f"compares updates) cannot run; {composes}")
    if a.norm_quantile:
        raise ConfigError(f"--norm-quantile learns its bound from the updates' norms, which --secure-aggregation hides; {composes}")
    if a.client_eval_every:
        raise ConfigError("--client-eval-every has each client report its own held-out accuracy in the clear, which "
                          "--secure-aggregation is there to prevent; evaluate on the server (--eval-every) instead")
    clip = a.secagg_clip or a.max_update_norm or a.client_dp_clip  # distributed DP: the clients clip to --client-dp-clip
    if not clip > 0:
        raise ConfigError("--secure-aggregation needs a norm bound that clients clip their updates to before masking (fixed-point "
                          "values need a range): set --max-update-norm (or --secagg-clip), e.g. 10; the round log counts the "
                          "clipped updates, so you can see whether the bound bites")
    if a.secagg_neighbours < 0 or a.secagg_threshold < 0 or a.secagg_max_weight < 0:
        raise ConfigError("--secagg-neighbours, --secagg-threshold and --secagg-max-weight must be >= 0 (0: the default)")
    max_weight = a.secagg_max_weight or (1 if a.weighting == "uniform" or a.client_dp_clip else int(a.weight_cap) or 1 << 16)
    if a.client_dp_clip and max_weight != 1:
        raise ConfigError("--secagg-max-weight with --client-dp-clip: distributed DP's noise is calibrated to updates of weight 1")
    if a.upload_codec == "int8":  # the dense, quantised form is what gets masked: 8-bit values
        if a.secagg_bits not in (24, 8):
            raise ConfigError(f"--upload-codec int8 with --secure-aggregation masks 8-bit values; drop --secagg-bits {a.secagg_bits} "
                              "(or use --upload-codec raw to choose the bits)")
    bits = 8 if a.upload_codec == "int8" else a.secagg_bits
    planned = a.clients_per_round or a.min_clients
    degree = effective_degree(planned, a.secagg_neighbours)
    threshold = a.secagg_threshold or default_threshold(degree)
    issue = problem(planned, degree, threshold, bits, max_weight)
    if issue:
        raise ConfigError(f"--secure-aggregation with {planned} clients a round (--clients-per-round, else --min-clients): {issue}")
    most = max(planned, a.max_clients)  # the sum of a round as large as --max-clients allows must fit the modulus too
    if capacity_bits(most, max_weight, bits) > MAX_MODULUS_BITS:
        raise ConfigError(f"--secure-aggregation: {most} clients (--max-clients) x weight {max_weight} x {bits}-bit values "
                          f"overflow the {MAX_MODULUS_BITS}-bit modulus: lower --secagg-bits, --secagg-max-weight or --max-clients")
    return SecAggSettings(a.secagg_threshold, a.secagg_neighbours, bits, clip, max_weight)
