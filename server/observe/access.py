"""Who may read the dashboard: one ASGI layer in front of every route, so no route can forget a rule.

In order: the Host header must name this server (a DNS-rebinding page cannot borrow a browser's cookie),
only GET and HEAD exist (405), and the access token must come as `Authorization: Bearer`, as the cookie
that opening `/?token=...` once sets (so EventSource, which cannot send headers, carries it), as `?token=` on
/metrics (a scrape config's params), or not at all for /metrics when the operator opened it. Every response carries a strict CSP and nosniff.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "fedtl_dashboard"
HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                                 b"font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def local_names(extra: tuple[str, ...] = ()) -> frozenset[str]:
    names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower(), *extra}
    return frozenset(n for n in names if n)


class AccessControl:
    def __init__(self, app: ASGIApp, token: str, *, names: frozenset[str], open_paths: frozenset[str] = frozenset(),
                 secure_cookie: bool = False) -> None:
        self.app = app
        self.token = token.encode()
        self.names = names
        self.open_paths = open_paths
        self.secure_cookie = secure_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self._host_allowed(headers.get("host", "")):
            return await _plain(send, 421, "this server does not answer to that Host name (add it with --dashboard-hosts)")
        if scope["method"] not in ("GET", "HEAD"):
            return await _plain(send, 405, "read-only: GET only", [(b"allow", b"GET, HEAD")])
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/" and "token" in query:  # the link printed at start: trade the token for a cookie, drop it from the URL
            if not self._valid(query["token"][0]):
                return await _plain(send, 403, "wrong token")
            cookie = f"{COOKIE}={query['token'][0]}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if self.secure_cookie else "")
            return await _plain(send, 303, "", [(b"location", b"/"), (b"set-cookie", cookie.encode())])
        if path not in self.open_paths:
            # /metrics?token=: what a scrape config's `params` or a quick curl can send (pages take the cookie instead)
            given = query["token"][0] if path == "/metrics" and "token" in query else _credential(headers)
            if given is None:
                return await _plain(send, 401, "access token required: open the link the server printed, or send "
                                               "'Authorization: Bearer TOKEN'", [(b"www-authenticate", b'Bearer realm="fedtl"')])
            if not self._valid(given):
                return await _plain(send, 403, "wrong token")
        await self.app(scope, receive, send)

    def _valid(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode("latin-1", "replace"), self.token)

    def _host_allowed(self, host: str) -> bool:
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:name.find("]")] if "]" in name else ""
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True  # an address names no one else: rebinding needs a DNS name
        except ValueError:
            return name in self.names


def _credential(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if "cookie" in headers:
        jar = SimpleCookie()
        try:
            jar.load(headers["cookie"])
        except Exception:  # a malformed cookie header is as good as none
            return None
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


def _with_headers(send: Callable) -> Callable:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
        await send(message)
    return wrapped


async def _plain(send: Callable, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode() if text else b""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
