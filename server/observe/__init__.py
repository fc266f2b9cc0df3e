"""Watching a run: the live dashboard, Prometheus metrics and TensorBoard, all fed by the round events.

Each is one more sink on the coordinator's event bus (server/events.py): nothing here reaches into the
coordinator, and a failing sink is logged and skipped, never fatal to the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedtl.server.events import Sink
from fedtl.server.observe.settings import ObserveSettings

logger = logging.getLogger(__name__)


class Observers:
    """What ObserveSettings asks for: its sinks (subscribe them) and its HTTP endpoints (start, stop)."""

    def __init__(self, settings: ObserveSettings, run_dir: Path, final_model: Path, *, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> None:
        self.settings = settings
        self.sinks: list[Sink] = []
        self.servers: dict[str, object] = {}
        self._closers: list = []
        view = metrics = None
        if settings.dashboard is not None:
            from fedtl.server.observe.view import RunView

            view = RunView(run_dir, final_model)
            self.sinks.append(view)
        if settings.web:
            from fedtl.server.observe.metrics import Metrics

            metrics = Metrics()
            self.sinks.append(metrics)
        if settings.tensorboard is not None:
            from fedtl.server.observe.tensorboard import TensorBoardSink

            board = TensorBoardSink(settings.tensorboard)
            self.sinks.append(board)
            self._closers.append(board.close)
        if settings.web:
            self._bind(view, metrics, None if settings.plain_http else tls_cert, None if settings.plain_http else tls_key)

    def _bind(self, view: object, metrics: object, tls_cert: Path | None, tls_key: Path | None) -> None:
        from fedtl.server.observe.access import AccessControl, local_names
        from fedtl.server.observe.serving import WebServer
        from fedtl.server.observe.web import build_app

        s = self.settings
        names = local_names(s.hosts)
        if s.dashboard is not None:
            app = AccessControl(build_app(view, metrics, stream_seconds=s.stream_seconds), s.token, names=names,  # type: ignore[arg-type]
                                open_paths=frozenset({"/metrics"}) if s.metrics_open else frozenset(), secure_cookie=tls_cert is not None)
            self.servers["dashboard"] = WebServer(app, s.dashboard, "--dashboard", tls_cert=tls_cert, tls_key=tls_key)
        if s.metrics is not None:
            app = AccessControl(build_app(None, metrics), s.token, names=names,  # type: ignore[arg-type]
                                open_paths=frozenset({"/metrics"}) if s.metrics_open else frozenset())
            self.servers["metrics"] = WebServer(app, s.metrics, "--metrics", tls_cert=tls_cert, tls_key=tls_key)

    def start(self) -> dict[str, str]:
        """Serve; return the URLs (for server.json and the log)."""
        urls: dict[str, str] = {}
        for name, server in self.servers.items():
            server.start()  # type: ignore[attr-defined]
            urls[name] = server.url + ("/metrics" if name == "metrics" else "/")  # type: ignore[attr-defined]
        if "dashboard" in urls:
            shown, where = shown_url(urls["dashboard"])
            if self.settings.token_generated:
                logger.warning("dashboard: %s?token=%s%s (a token made for this run: give --dashboard-token or FEDTL_DASHBOARD_TOKEN "
                               "to keep one across restarts)", shown, self.settings.token, where)
            else:
                logger.info("dashboard: %s%s (open it with ?token=YOUR_TOKEN once)", shown, where)
        if "metrics" in urls:
            if self.settings.metrics_open:
                logger.info("Prometheus metrics: %s (open: no token needed)", urls["metrics"])
            elif self.settings.token_generated and "dashboard" not in urls:
                logger.warning("Prometheus metrics: %s (send 'Authorization: Bearer %s'; a token made for this run: give "
                               "--dashboard-token or FEDTL_DASHBOARD_TOKEN to keep one)", urls["metrics"], self.settings.token)
            else:
                logger.info("Prometheus metrics: %s (send 'Authorization: Bearer TOKEN')", urls["metrics"])
        return urls

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()  # type: ignore[attr-defined]
        for close in self._closers:
            close()


def shown_url(url: str) -> tuple[str, str]:
    """The dashboard's link as a person can open it: FEDTL_DASHBOARD_URL when the operator knows the published address
    (a container's port mapped elsewhere on the host); for an all-interfaces bind, localhost, and where else to look."""
    public = os.environ.get("FEDTL_DASHBOARD_URL", "").strip().rstrip("/")
    if public:
        return public + "/", ""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        return f"{scheme}://localhost:{port}/", (" (from this machine; it listens on every interface: from elsewhere use this "
                                                  "machine's name, and in a container `docker compose port server 8080` gives the "
                                                  "host's address; FEDTL_DASHBOARD_URL prints that instead)")
    return url, ""
