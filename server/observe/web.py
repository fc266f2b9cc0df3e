"""The dashboard's routes: the page and its files, the run's state, its live event stream, /metrics.

`/events` is Server-Sent Events: a `snapshot` first (or, with Last-Event-ID, the deltas missed since),
then every delta as it happens, a keep-alive comment when idle. Streams are bounded (the 17th gets 503)
and may be ended by the server after --dashboard-stream-seconds; the browser reconnects with its
Last-Event-ID and misses nothing (see server/observe/view.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fedtl.server.observe.metrics import Metrics
from fedtl.server.observe.settings import MAX_STREAMS
from fedtl.server.observe.view import RunView

KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies close silent connections)
STATIC = {  # the only files served: name -> content type
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def static_files() -> dict[str, bytes]:
    root = resources.files("fedtl.server.observe") / "static"
    return {name: (root / name).read_bytes() for name in STATIC}


class Streams:
    """Counts open event streams; the limit keeps a crowd of tabs (or a hostile loop) from holding the server."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0


class _CountedStream(StreamingResponse):
    """Gives its slot back however the response ends, even one whose body never started."""

    def __init__(self, body: AsyncIterator[str], streams: Streams) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"x-accel-buffering": "no"})
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.streams.open -= 1


def build_app(view: RunView | None, metrics: Metrics | None, *, stream_seconds: float = 0.0, streams: Streams | None = None) -> Starlette:
    files = static_files() if view is not None else {}
    streams = streams or Streams()
    routes: list[Route] = []

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in files:
            return PlainTextResponse("not found\n", 404)
        return Response(files[name], media_type=STATIC[name])

    async def state(_: Request) -> Response:
        assert view is not None
        body = view.snapshot()[1]
        return Response(body, media_type="application/json")

    async def events(request: Request) -> Response:
        assert view is not None
        if streams.open >= streams.limit:
            return PlainTextResponse(f"at most {streams.limit} event streams at once; close a tab\n", 503, headers={"retry-after": "5"})
        last = _last_id(request.headers.get("last-event-id") or request.query_params.get("last"))
        streams.open += 1
        return _CountedStream(_stream(view, last, stream_seconds), streams)

    async def prometheus(_: Request) -> Response:
        assert metrics is not None
        return Response(metrics.exposition(), media_type=PROMETHEUS)

    if view is not None:
        routes += [Route("/", page), Route("/static/{name}", page), Route("/api/state", state), Route("/events", events)]
    if metrics is not None:
        routes.append(Route("/metrics", prometheus))
    return Starlette(routes=routes)


async def _stream(view: RunView, last: int | None, limit: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def notify() -> None:
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:  # the web server's loop is gone: the stream is over anyway
            pass

    stop_listening = view.listen(notify)
    ends = time.monotonic() + limit if limit else None
    try:
        yield "retry: 250\n\n"  # a dropped stream (a proxy, --dashboard-stream-seconds) is picked up again at once
        deltas = view.since(last) if last is not None else None
        if deltas is None:
            seq, body = view.snapshot()
            yield f"id: {seq}\nevent: snapshot\ndata: {body}\n\n"
            last = seq
        else:
            for seq, kind, body in deltas:
                yield f"id: {seq}\nevent: {kind}\ndata: {body}\n\n"
                last = seq
        while True:
            wait = KEEPALIVE if ends is None else min(KEEPALIVE, ends - time.monotonic())
            if wait <= 0:
                return
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            changed.clear()
            assert last is not None  # set from the snapshot or the deltas above
            deltas = view.since(last)
            if deltas is None:  # fell behind the journal: start over from a snapshot
                seq, body = view.snapshot()
                yield f"id: {seq}\nevent: snapshot\ndata: {body}\n\n"
                last = seq
                continue
            if deltas:  # one write for all that is new: a burst of events costs one send per stream, not one each
                yield "".join(f"id: {seq}\nevent: {kind}\ndata: {body}\n\n" for seq, kind, body in deltas)
                last = deltas[-1][0]
    finally:
        stop_listening()


def _last_id(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit() or len(text) > 18:
        return None
    return int(text)
