"""The built-in rules' own flags and their checks, declared apart from the rules: reading them must not load the rules'
code (numpy, torch), so `--help` and a mistyped flag answer at once. Each rule's `from_settings` gets the checked values
back as `s.rule_options`; a knob given for another rule is refused (server/strategies/settings.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedtl.common.errors import ConfigError

Options = Callable[[argparse.Namespace, int], dict[str, Any]]  # (flags, the fewest updates a round may close with) -> options


@dataclass(frozen=True)
class Knobs:
    title: str  # its --help section and config-file table ("": no flags of its own)
    add: Callable[[argparse._ArgumentGroup], None] | None
    options: Options


def _none(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    return {}


def _trim_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--trim-fraction", type=float, default=None,
                   help="share of the values dropped at each end of every coordinate (default: 0.1, and at least one "
                        "client's worth while any value is kept: 10 %% of a small round is no client at all)")


def _trim(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    fraction = 0.1 if a.trim_fraction is None else a.trim_fraction
    if not 0 <= fraction < 0.5:
        raise ConfigError(f"--trim-fraction must be in [0, 0.5), got {fraction}")
    return {"fraction": fraction, "at_least": 1 if a.trim_fraction is None else 0}  # the default assumes an attacker


def _krum_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--byzantine", type=int, default=None, help="krum, bulyan, dnc: how many clients of a round may be dishonest (default 1)")
    g.add_argument("--krum-select", type=int, default=None, help="krum: average the best m updates (1: Krum; more: Multi-Krum; default 1)")


def byzantine(a: argparse.Namespace) -> int:
    """--byzantine (declared with krum's knobs; bulyan and dnc read it too), checked."""
    f = 1 if a.byzantine is None else a.byzantine
    if f < 0:
        raise ConfigError("--byzantine must be >= 0")
    return int(f)


def _needs(rule: str, f: int, needed: int, why: str, min_fit: int) -> None:
    if min_fit < needed:
        raise ConfigError(f"{rule} with --byzantine {f} needs at least {needed} updates a round ({why}), but a round may close with "
                          f"{min_fit}: raise --min-fit-clients (and --min-clients), or lower --byzantine")


def _krum(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    f, m = byzantine(a), 1 if a.krum_select is None else a.krum_select
    if m < 1:
        raise ConfigError("--krum-select must be >= 1")
    if min_fit < max(2 * f + 3, m):
        raise ConfigError(f"krum with --byzantine {f} and --krum-select {m} needs at least {max(2 * f + 3, m)} updates a round "
                          f"(n >= 2f + 3), but a round may close with {min_fit}: raise --min-fit-clients (and --min-clients), or lower --byzantine")
    return {"byzantine": f, "select": m}


def _bulyan(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    f = byzantine(a)
    _needs("bulyan", f, 4 * f + 3, "n >= 4f + 3", min_fit)
    return {"byzantine": f}


def _dnc(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    f = byzantine(a)
    _needs("dnc", f, 2 * f + 1, "more honest than dishonest", min_fit)
    return {"byzantine": f}


def _fltrust_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--root-data", default=None, help="the coordinator's small clean root set (its train split), e.g. a folder")
    g.add_argument("--root-per-class", type=int, default=None, help="root images per class (default 10)")


def _fltrust(a: argparse.Namespace, min_fit: int) -> dict[str, Any]:
    if a.root_data is None:
        raise ConfigError("--aggregation fltrust needs --root-data: FLTrust scores updates against the coordinator's own "
                          "update on its small clean root set")
    per_class = 10 if a.root_per_class is None else a.root_per_class
    if per_class < 1:
        raise ConfigError("--root-per-class must be >= 1")
    return {"root_data": a.root_data, "root_per_class": per_class}  # the coordinator's to load (server/app.py)


KRUM_TITLE = "--aggregation krum, bulyan and dnc"
KNOBS: dict[str, Knobs] = {
    "mean": Knobs("", None, _none),
    "median": Knobs("", None, _none),
    "trimmed-mean": Knobs("--aggregation trimmed-mean", _trim_flags, _trim),
    "krum": Knobs(KRUM_TITLE, _krum_flags, _krum),
    "bulyan": Knobs("", None, _bulyan),  # --byzantine is krum's flag
    "dnc": Knobs("", None, _dnc),
    "geomedian": Knobs("", None, _none),
    "fltrust": Knobs("--aggregation fltrust", _fltrust_flags, _fltrust),
}
SHARED = {"byzantine": ("bulyan", "dnc")}  # a knob declared by one rule that these read too
