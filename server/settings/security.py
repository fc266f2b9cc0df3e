"""Who may connect: TLS (and client certificates), tokens, and the explicit opt-out for a trusted network."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedtl.common.cli import check_file
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section

TOKEN_ENV = "FEDTL_TOKEN"


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM); enables TLS")
    g.add_argument("--tls-key", type=Path, default=None, help="the certificate's private key (PEM)")
    g.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates signed by this CA (mutual TLS)")
    g.add_argument("--token", default=None, help=f"shared token every client must send (or {TOKEN_ENV})")
    g.add_argument("--tokens-file", type=Path, default=None, help="per-client tokens: lines of 'client-name token'")
    g.add_argument("--allow-insecure", action="store_true", help="listen without TLS on a non-loopback address")


SECTION = Section("security", "security", add_flags)


def token(a: argparse.Namespace, env: dict[str, str]) -> str | None:
    """The shared token (flag or environment), after checking every credential file names what it should."""
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if a.tls_client_ca is not None and a.tls_cert is None:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    check_file("--tls-cert", a.tls_cert, "CERTIFICATE")
    check_file("--tls-key", a.tls_key, "PRIVATE KEY")
    check_file("--tls-client-ca", a.tls_client_ca, "CERTIFICATE")
    check_file("--tokens-file", a.tokens_file)
    shared = a.token or env.get(TOKEN_ENV) or None
    from fedtl.server.auth import Authenticator  # a bad tokens file, or one with --token, fails now

    pins = Authenticator.from_files(shared, a.tokens_file).pins
    if pins and not a.num_partitions > max(pins.values()):
        raise ConfigError(f"--tokens-file pins shards up to {max(pins.values())}: set --num-partitions to more than that")
    return shared


def site_tokens(shared: str | None, tokens_file: Path | None) -> list[str]:
    """Every token a site may present (checked already)."""
    from fedtl.server.auth import Authenticator

    auth = Authenticator.from_files(shared, tokens_file)
    return [t for t in [auth.shared, *auth.per_client.values()] if t]
