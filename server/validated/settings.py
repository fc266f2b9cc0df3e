"""Validated aggregation's flags, checked: what cannot work with it is refused with one line saying what to change."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section
from fedtl.server.validated import ValidatedSettings


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--helper", default="", help="HOST:PORT of a helper (python -m server.helper, run by another party): two-server "
                   "validated aggregation, where each client's input is checked to be within --max-update-norm and a client "
                   "whose input is not is named and left out (privacy: the two servers must not collude)")
    g.add_argument("--helper-ca-cert", type=Path, help="the CA that signed the helper's certificate (without it: no TLS to the helper)")
    g.add_argument("--helper-token", default=os.environ.get("FEDTL_HELPER_TOKEN"),
                   help="the leader token the helper was given (its --leader-token; env FEDTL_HELPER_TOKEN)")
    g.add_argument("--validated-bits", type=int, default=16, help="fixed-point bits per value of a validated input (1..16)")
    g.add_argument("--validated-norm-quantile", type=float, default=0.5,
                   help="from round 2 the bound is this quantile of the clients' update norms (within 1.25x, counted from proven "
                        "bits: how many lie above each level, not who), up to --max-update-norm; 0: --max-update-norm, fixed")


SECTION = Section("validated-aggregation", "two-server validated aggregation (docs/secure-aggregation.md)", add_flags)


def validated_settings(a: argparse.Namespace) -> ValidatedSettings | None:
    if not a.helper:
        if a.helper_ca_cert is not None or a.validated_bits != 16 or a.validated_norm_quantile != 0.5:
            raise ConfigError("--helper-ca-cert, --validated-bits and --validated-norm-quantile apply with --helper")
        return None
    host, _, port = a.helper.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--helper {a.helper!r}: use HOST:PORT, e.g. helper.example.org:50052")
    if a.secure_aggregation:
        raise ConfigError("--helper and --secure-aggregation: choose one (--helper checks each input; SecAgg+ cannot)")
    if a.aggregation != "mean" or a.client_dp_clip or a.client_eval_every:
        raise ConfigError("--helper sums inputs it never sees: it composes with --aggregation mean and every --server-optimizer, "
                          "not with robust rules, --client-dp-clip or --client-eval-every")
    if a.upload_codec != "raw":
        raise ConfigError(f"--helper: validated inputs travel as field elements; drop --upload-codec {a.upload_codec}")
    if not a.max_update_norm > 0:
        raise ConfigError("--helper needs --max-update-norm: the L2 bound each client's input is checked against, e.g. 10")
    if (a.clients_per_round or a.min_clients) < 3:
        raise ConfigError("--helper needs at least 3 clients a round (--min-clients, --clients-per-round): the sum of fewer "
                          "would show too much of each input")
    if not 1 <= a.validated_bits <= 16:
        raise ConfigError("--validated-bits must be 1..16")
    if not 0 <= a.validated_norm_quantile < 1:
        raise ConfigError("--validated-norm-quantile must be in [0, 1) (0: a fixed bound)")
    if a.helper_ca_cert is not None and not a.helper_ca_cert.is_file():
        raise ConfigError(f"--helper-ca-cert {a.helper_ca_cert}: no such file")
    if a.helper_ca_cert is not None and not a.helper_token:
        raise ConfigError("--helper with TLS needs --helper-token (the helper's --leader-token)")
    return ValidatedSettings(a.helper, a.helper_ca_cert, a.helper_token, a.validated_bits, a.max_update_norm, a.validated_norm_quantile)
