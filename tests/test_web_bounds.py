"""What a peer can hold of the dashboard's or metrics endpoint before it authenticates: a bounded share of the
connections per address, for a bounded time. Real sockets against the real uvicorn server (server/observe/serving.py)."""

from __future__ import annotations

import socket

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fedtl.server.observe.serving import PER_ADDRESS, WebServer
from fedtl.server.observe.settings import Endpoint


def _app() -> Starlette:
    return Starlette(routes=[Route("/", lambda _: PlainTextResponse("ok"))])


@pytest.fixture
def server(request):  # type: ignore[no-untyped-def]
    web = WebServer(_app(), Endpoint("127.0.0.1", 0), "--dashboard", first_request=getattr(request, "param", 1.0))
    web.start()
    yield web
    web.stop()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
    return sock


def _get(port: int, source: str) -> bytes:
    with _connect(port, source) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: sock.recv(4096), b""))


@pytest.mark.parametrize("server", [3600.0], indirect=True)  # no timeout in play: only the per-address share closes sockets
def test_one_address_cannot_take_every_connection_and_the_owner_still_gets_in(server) -> None:  # type: ignore[no-untyped-def]
    idle = [_connect(server.port) for _ in range(PER_ADDRESS)]
    extra = [_connect(server.port) for _ in range(60)]  # the attack: 76 idle sockets from one address
    for sock in extra:
        assert sock.recv(1) == b"", "connections beyond the per-address share are closed at once"
    for sock in idle:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: the share itself is kept
            sock.recv(1)
    assert _get(server.port, "127.0.0.2").startswith(b"HTTP/1.1 200"), "another address (the owner) is served"
    for sock in idle + extra:
        sock.close()


def test_a_connection_that_sends_nothing_is_closed_and_its_slot_freed(server) -> None:  # type: ignore[no-untyped-def]
    silent = _connect(server.port)
    assert silent.recv(1) == b"", "closed after the first-request timeout (the recv waits for it)"
    talking = _connect(server.port)
    talking.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert talking.recv(4096).startswith(b"HTTP/1.1 200"), "a connection that sends in time is served"
    silent.close()
    talking.close()
