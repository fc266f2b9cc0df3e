"""Logging set-up, called once by each __main__; modules only ever call logging.getLogger(__name__).

`text`: a line a person reads. `json`: one object a line for a log shipper: ts, level, logger, message,
and for the lines a round event printed, `event` (its type) and `fields` (its values), so no one parses
prose to learn a round's accuracy.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import math
import sys
from datetime import UTC, datetime

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

# The round event whose sink is logging right now (set by the console sink around its handler).
CURRENT_EVENT: contextvars.ContextVar[object | None] = contextvars.ContextVar("fedtl_current_event", default=None)


def configure_logging(level: str = "INFO", prefix: str = "", fmt: str = "text") -> None:
    """Text lines (time, level, where, message) or JSON objects, on stderr."""
    if level.upper() not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(prefix.strip()))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)-7s {prefix}%(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for noisy in ("PIL", "urllib3", "asyncio", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if self.process:
            out["process"] = self.process
        event = CURRENT_EVENT.get()
        if event is not None and dataclasses.is_dataclass(event):
            out["event"] = type(event).__name__
            out["fields"] = _plain(dataclasses.asdict(event))  # type: ignore[arg-type]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, allow_nan=False, default=str)


def _plain(value: object) -> object:
    """JSON values: NaN and infinities (nothing measured) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
