"""Two-server validated aggregation's client flags (client/mods/validated.py is the mod): torch-free, for --help."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--helper", default="", help="HOST:PORT of the helper this site trusts not to collude with the coordinator: "
                   "rounds of two-server validated aggregation send it half of this site's input (without it they are refused)")
    g.add_argument("--helper-ca-cert", type=Path, default=None, help="the CA that signed the helper's certificate (default: --ca-cert)")


SECTION = Section("validated-aggregation", "two-server validated aggregation", add_flags)


def helper_of(a: argparse.Namespace) -> tuple[str, Path | None]:
    if a.helper:
        host, _, port = a.helper.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--helper {a.helper!r}: use HOST:PORT, e.g. helper.example.org:50052")
    elif a.helper_ca_cert is not None:
        raise ConfigError("--helper-ca-cert applies with --helper")
    return a.helper, a.helper_ca_cert or a.ca_cert
