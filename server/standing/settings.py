"""`--standing` and the operator's credential: what turns one run into a coordinator that takes jobs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section

OPERATOR_TOKEN_ENV = "FEDTL_OPERATOR_TOKEN"


@dataclass(frozen=True)
class StandingSettings:
    operator_token: str  # "": operators authenticate by certificate only
    allow_job_plugins: bool  # jobs may name the operator's own code for the coordinator (--aggregation, --metric-aggregation)
    operator_cert_name: str = ""  # with --tls-client-ca: the common name of the operators' client certificate


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--standing", action="store_true", help="stay up with no job: sites join once, operators submit jobs with "
                   "`fedtl submit` (docs/jobs.md); this command's other flags are every job's defaults")
    g.add_argument("--operator-token", default=None, help=f"the credential of operators (submit, ls, logs, stop; or "
                   f"{OPERATOR_TOKEN_ENV}); it cannot join as a site, and site tokens cannot submit")
    g.add_argument("--operator-cert-name", default="", metavar="NAME", help="with --tls-client-ca: a client certificate of that CA "
                   "whose common name is NAME is the operators' credential (python -m server.certs --operator NAME makes one); it "
                   "cannot join as a site")
    g.add_argument("--allow-job-plugins", action="store_true", help="let jobs run the operator's own code on the coordinator "
                   "(--aggregation package.module:Class, --metric-aggregation); off: an operator runs no code here")


SECTION = Section("standing", "standing federation (docs/jobs.md)", add_flags)


def settings(a: argparse.Namespace, env: dict[str, str], site_tokens: list[str]) -> StandingSettings | None:
    token = a.operator_token or env.get(OPERATOR_TOKEN_ENV) or ""
    if not a.standing:
        if a.operator_token or a.allow_job_plugins or a.operator_cert_name:  # the environment's token may be an operator's, for fedtl submit
            raise ConfigError("--operator-token, --operator-cert-name and --allow-job-plugins belong to a standing coordinator: add --standing")
        return None
    if a.operator_cert_name and a.tls_client_ca is None:
        raise ConfigError("--operator-cert-name names a client certificate: it needs --tls-client-ca (mutual TLS), the CA that signs it")
    if token and len(token) < 16 or not (token or a.operator_cert_name):
        raise ConfigError(f"--standing needs the operators' credential: --operator-token (or {OPERATOR_TOKEN_ENV}) of at least 16 "
                          "characters (python -m server.certs prints a random one), or --operator-cert-name with --tls-client-ca")
    if token in site_tokens:
        raise ConfigError("--operator-token is also a site's token: give operators their own, so a site cannot submit jobs")
    return StandingSettings(token, a.allow_job_plugins, a.operator_cert_name)
