"""What the operator asked to watch the run with: the dashboard, Prometheus metrics, TensorBoard.

Both HTTP endpoints follow the gRPC port's rule: loopback by default, any other address only with the
server's TLS certificate or --allow-insecure. Every route needs the access token unless metrics are
explicitly opened (Prometheus scrapers rarely carry one).
"""

from __future__ import annotations

import argparse
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section

TOKEN_ENV = "FEDTL_DASHBOARD_TOKEN"
TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")  # safe in a URL, a cookie and a header as it is
MAX_STREAMS = 16  # concurrent /events streams; the next one gets 503


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def url(self, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}"


@dataclass(frozen=True)
class ObserveSettings:
    dashboard: Endpoint | None = None
    metrics: Endpoint | None = None  # a metrics-only endpoint (the dashboard serves /metrics too)
    token: str = ""  # required on every route; generated when not given
    token_generated: bool = False  # printed once at start, so the operator can open the page
    hosts: tuple[str, ...] = ()  # further Host header names accepted (a reverse proxy's, a container's published name)
    metrics_open: bool = False  # /metrics without the token
    stream_seconds: float = 0.0  # 0: event streams stay open; >0: the server ends each stream after this long (tests, proxies)
    linger: float = 0.0  # keep serving this many seconds after the run ends, so a browser sees the outcome
    tensorboard: Path | None = None
    plain_http: bool = False  # --dashboard-insecure: no TLS on the HTTP endpoints even where the gRPC port has it

    @property
    def web(self) -> bool:
        return self.dashboard is not None or self.metrics is not None


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--dashboard", default=None, metavar="[HOST:]PORT",
                   help="serve the live dashboard (and /metrics) here; loopback unless HOST says otherwise (port 0: any free port)")
    g.add_argument("--dashboard-token", default=None,
                   help=f"access token for the dashboard and metrics (or {TOKEN_ENV}); a random one is printed at start otherwise")
    g.add_argument("--dashboard-hosts", default="", metavar="NAME,...",
                   help="more Host header names to accept (e.g. the name a reverse proxy or a published container port uses)")
    g.add_argument("--dashboard-linger", type=float, default=0.0, metavar="SECONDS",
                   help="keep the dashboard up this long after the run ends")
    g.add_argument("--dashboard-stream-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    g.add_argument("--dashboard-insecure", action="store_true",
                   help="serve the dashboard and /metrics over plain HTTP on any address (e.g. in a container whose port is "
                   "published on the host's loopback, or behind a TLS-terminating proxy); the token is still required")
    g.add_argument("--metrics", default=None, metavar="[HOST:]PORT", help="serve Prometheus metrics here without the dashboard")
    g.add_argument("--metrics-open", action="store_true", help="serve /metrics without the access token")
    g.add_argument("--tensorboard", type=Path, default=None, metavar="DIR", help="write per-round scalars for TensorBoard here")


SECTION = Section("observability", "observability (docs/observability.md)", add_flags)


def from_namespace(a: argparse.Namespace, env: dict[str, str], *, tls: bool, allow_insecure: bool) -> ObserveSettings:
    dashboard = parse_endpoint("--dashboard", a.dashboard)
    metrics = parse_endpoint("--metrics", a.metrics)
    for flag, endpoint in (("--dashboard", dashboard), ("--metrics", metrics)):
        if endpoint is not None and not endpoint.loopback and not tls and not allow_insecure and not a.dashboard_insecure:
            raise ConfigError(f"{flag} {endpoint.host}:{endpoint.port} is reachable from other machines, and without TLS anyone on "
                              "the network can read the access token and the run. Add --tls-cert/--tls-key (the dashboard uses the "
                              "gRPC port's certificate), listen on 127.0.0.1, or pass --dashboard-insecure where the port is "
                              "only reachable from this host (a container's port published on 127.0.0.1) or a trusted network.")
    if dashboard and metrics and dashboard.port and (dashboard.host, dashboard.port) == (metrics.host, metrics.port):
        raise ConfigError("--dashboard and --metrics name the same address; the dashboard serves /metrics already")
    for flag, value in (("--dashboard-linger", a.dashboard_linger), ("--dashboard-stream-seconds", a.dashboard_stream_seconds)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 seconds, got {value}")
    token = a.dashboard_token or env.get(TOKEN_ENV) or ""
    if token and not TOKEN.match(token):
        raise ConfigError("--dashboard-token must be 16-256 characters of A-Z a-z 0-9 . _ ~ - "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(24))' makes one)")
    generated = not token and (dashboard is not None or (metrics is not None and not a.metrics_open))
    hosts = tuple(h.strip().lower() for h in a.dashboard_hosts.split(",") if h.strip())
    return ObserveSettings(dashboard=dashboard, metrics=metrics, token=token or (secrets.token_urlsafe(24) if generated else ""),
                           token_generated=generated, hosts=hosts, metrics_open=a.metrics_open,
                           stream_seconds=a.dashboard_stream_seconds, linger=a.dashboard_linger, tensorboard=a.tensorboard,
                           plain_http=a.dashboard_insecure or not tls)


def parse_endpoint(flag: str, text: str | None) -> Endpoint | None:
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise ConfigError(f"{flag} {text!r}: use PORT or HOST:PORT, e.g. 8080, 127.0.0.1:8080 or 0.0.0.0:8080")
    return Endpoint(host, int(port))
