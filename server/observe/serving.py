"""An HTTP endpoint on its own thread and event loop (uvicorn), so page loads and event streams never
wait on, or hold up, the coordinator's loop. The socket is bound when the server is built: a taken port
fails at start with the flag's name, before any data is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedtl.common.errors import ConfigError
from fedtl.server.observe.settings import Endpoint

MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this: event streams, page loads and scrapes together
PER_ADDRESS = 24  # open connections one address may hold, more than the 16 event streams; more are closed at once
FIRST_REQUEST = 10.0  # seconds a new connection may take to send its first bytes before it is closed


class _BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with what a peer can hold before it authenticates bounded: at most PER_ADDRESS open
    connections from one address, so one address cannot take the MAX_CONNECTIONS slots and lock the owner out (70 idle
    sockets did: every request got 503); and a connection that sends nothing is closed after `first_request` seconds
    (uvicorn's keep-alive timer starts only after a first response, so a silent socket held its slot for good)."""

    first_request = FIRST_REQUEST

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        if sum(1 for c in self.connections if isinstance(c, H11Protocol) and c.client and c.client[0] == host) > PER_ADDRESS:
            transport.close()  # connection_lost takes it out of the count
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.first_request, self.timeout_keep_alive_handler)  # data cancels it


class WebServer:
    def __init__(self, app: ASGIApp, endpoint: Endpoint, flag: str, *, tls_cert: Path | None = None, tls_key: Path | None = None,
                 first_request: float = FIRST_REQUEST) -> None:
        self.sock = bind(endpoint, flag)
        self.port = int(self.sock.getsockname()[1])
        self.endpoint = Endpoint(endpoint.host, self.port)
        self.tls = tls_cert is not None
        protocol = type("BoundedH11", (_BoundedH11,), {"first_request": first_request})
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off", http=protocol, ws="none",
                                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
                                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5, timeout_graceful_shutdown=1,
                                server_header=False, proxy_headers=False, h11_max_incomplete_event_size=16 * 1024)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"fedtl-web-{self.port}", daemon=True)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    @property
    def url(self) -> str:
        return self.endpoint.url(self.tls)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise ConfigError(f"the HTTP endpoint on port {self.port} did not start (see the lines above)")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(3)
        if self._thread.is_alive():  # an event stream still open: cut it
            self._server.force_exit = True
            self._thread.join(3)
        self.sock.close()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.sock]))


def bind(endpoint: Endpoint, flag: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    try:
        sock = socket.create_server((endpoint.host, endpoint.port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(f"{flag} {endpoint.host}:{endpoint.port}: cannot listen there ({exc.strerror or exc}); "
                          "choose another port (0: any free one)") from None
    sock.set_inheritable(False)
    return sock
