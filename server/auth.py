"""Client tokens: one shared token and/or one per client name. Pure: the transport's interceptor calls it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from fedtl.common.errors import ConfigError, Unauthenticated

TOKEN_HEADER = "authorization"  # "Bearer <token>"
CLIENT_HEADER = "x-fedtl-client"  # the client's --name, bound to per-client tokens


@dataclass(frozen=True)
class Authenticator:
    shared: str | None = None
    per_client: dict[str, str] = field(default_factory=dict)
    pins: dict[str, int] = field(default_factory=dict)  # client name -> shard the operator pinned (tokens file: shard=I)

    @property
    def enabled(self) -> bool:
        return bool(self.shared or self.per_client)

    @staticmethod
    def from_files(shared: str | None, tokens_file: Path | None) -> Authenticator:
        if shared is not None and tokens_file is not None:
            raise ConfigError("--token and --tokens-file: choose one. With a shared token any client could use any name; "
                              "per-client tokens bind each name to its own token")
        per_client: dict[str, str] = {}
        pins: dict[str, int] = {}
        if tokens_file is not None:
            try:
                text = tokens_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--tokens-file {tokens_file}: cannot read it as text ({exc})") from None
            for number, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                pin = parts[2] if len(parts) == 3 else ""
                if len(parts) not in (2, 3) or (pin and not (pin.startswith("shard=") and pin[6:].isdigit())):
                    raise ConfigError(f"--tokens-file {tokens_file}:{number}: expected 'client-name token' or 'client-name token shard=I'")
                if parts[0] in per_client:
                    raise ConfigError(f"--tokens-file {tokens_file}:{number}: client {parts[0]!r} listed twice")
                per_client[parts[0]] = parts[1]
                if pin:
                    pins[parts[0]] = int(pin[6:])
        for token in [shared, *per_client.values()]:
            if token is not None and len(token) < 16:
                raise ConfigError("tokens must be at least 16 characters (python -m server.certs prints a random one)")
        if len(set(pins.values())) != len(pins):
            raise ConfigError(f"--tokens-file {tokens_file}: two clients pinned to the same shard")
        return Authenticator(shared, per_client, pins)

    def check(self, authorization: str | None, client: str | None) -> None:
        """Raise Unauthenticated unless the bearer token is the shared one or the named client's own."""
        if not self.enabled:
            return
        if not authorization:
            raise Unauthenticated("this server requires a token: start the client with --token (or FEDTL_TOKEN)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("malformed authorization metadata; expected 'Bearer <token>'")
        if self.shared is not None and hmac.compare_digest(token.encode(), self.shared.encode()):
            return
        own = self.per_client.get(client or "")
        if own is not None and hmac.compare_digest(token.encode(), own.encode()):
            return
        raise Unauthenticated(f"wrong token for client {client!r}: check --token and --name against the server's tokens")

    def bound_name(self, client: str | None) -> str | None:
        """With per-client tokens, the name the caller authenticated as; None when any name may be used."""
        return client if self.per_client else None


def is_token(expected: str, authorization: str | None) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and hmac.compare_digest(token.encode(), expected.encode())


@dataclass(frozen=True)
class OperatorCredential:
    """A standing coordinator's operators: a token, and/or the common name of their client certificate (mutual TLS)."""

    token: str = ""
    cert_name: str = ""

    def refusal(self, authorization: str | None, cert_names: list[str]) -> str:
        """Why this caller is not an operator ("": it is)."""
        if (self.token and is_token(self.token, authorization)) or (self.cert_name and self.cert_name in cert_names):
            return ""
        if not authorization and not cert_names:
            return "operators must send the operator's token (--operator-token or FEDTL_OPERATOR_TOKEN) or certificate (--tls-cert)"
        return ("not the operator's credential: a site's token cannot submit, list, read or stop jobs, nor can a site's certificate; "
                "check --operator-token (or FEDTL_OPERATOR_TOKEN), or the operator's --tls-cert")

    def site_refusal(self, authorization: str | None, cert_names: list[str]) -> str:
        """Why this caller may not act as a site ("": it may): the operator's credential never joins."""
        if self.token and is_token(self.token, authorization):
            return ("this is the operator's token, which cannot join as a site: a site joins with its own (--token, FEDTL_TOKEN); "
                    "operators use fedtl submit, ls, logs and stop")
        if self.cert_name and self.cert_name in cert_names:
            return "this is the operator's certificate, which cannot join as a site: a site joins with its own"
        return ""
