"""Secure aggregation's flags and settings, checked: what cannot work with it or would not be safe is refused with one
line saying what to change. Free of torch, so flags are checked before anything heavy loads."""

from __future__ import annotations

import argparse

from fedtl.common.errors import ConfigError
from fedtl.common.secagg.fixedpoint import MAX_MODULUS_BITS, capacity_bits
from fedtl.common.secagg.graph import effective_degree
from fedtl.common.secagg.params import default_threshold, problem
from fedtl.common.sections import Section
from fedtl.server.secagg import SecAggSettings

_FLAGS = ("secagg_neighbours", "secagg_threshold", "secagg_clip", "secagg_max_weight")


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--secure-aggregation", action="store_true", help="SecAgg+: the coordinator learns only the sum of each round's updates")
    g.add_argument("--secagg-neighbours", type=int, default=0, help="clients each client shares its secrets with (0: all; SecAgg+ uses ~log n)")
    g.add_argument("--secagg-threshold", type=int, default=0,
                   help="shares that rebuild a secret: more than half the neighbours (0: 2k/3 + 1, which tolerates a third dropping out)")
    g.add_argument("--secagg-bits", type=int, default=24, help="fixed-point bits per coordinate (stochastic rounding)")
    g.add_argument("--secagg-clip", type=float, default=0.0, help="L2 bound clients clip their updates to before masking (0: --max-update-norm)")
    g.add_argument("--secagg-max-weight", type=int, default=0,
                   help="the most examples one update may count for (0: --weight-cap, or 65536; --weighting uniform: 1)")


SECTION = Section("secure-aggregation", "secure aggregation (docs/secure-aggregation.md)", add_flags)


def secure_settings(a: argparse.Namespace) -> SecAggSettings | None:
    """Secure aggregation's settings, refusing what cannot work with it or would not be safe."""
    if not a.secure_aggregation:
        given = [f"--{f.replace('_', '-')}" for f in _FLAGS if getattr(a, f)] + (["--secagg-bits"] if a.secagg_bits != 24 else [])
        if given:
            raise ConfigError(f"{given[0]} applies with --secure-aggregation")
        return None
    if a.upload_codec.startswith("topk"):
        raise ConfigError(f"--upload-codec {a.upload_codec} with --secure-aggregation: masks hide dense vectors, and a sparse update's "
                          "indices would show the coordinator which entries each client changed most; use raw (or --secagg-bits)")
    if a.upload_codec not in ("raw", "int8"):
        raise ConfigError(f"--upload-codec {a.upload_codec} with --secure-aggregation: masked updates travel as fixed-point words "
                          "(--secagg-bits sets their size); use raw, or int8 (8-bit values in words just wide enough for the sum)")
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
