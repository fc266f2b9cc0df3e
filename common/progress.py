"""Progress of a long phase (feature-cache build, model download, local epochs, evaluation).

On a terminal: one bar redrawn in place. Anywhere else (a pipe, a container log, --log-format json): a
log line at most every 10 s, never a carriage return. Quick phases print nothing: the bar appears after
a second, the first line after 10 s, and a closing line only follows lines already printed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

logger = logging.getLogger("fedtl.progress")
T = TypeVar("T")

LINE_EVERY = 10.0  # seconds between lines when output is not a terminal
BAR_AFTER = 1.0  # seconds before a bar appears at all
BAR_EVERY = 0.1  # seconds between redraws
WIDTH = 28


class Progress:
    def __init__(self, label: str, total: float, unit: str = "", *, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, max(float(total), 0.0), unit
        self.stream = stream or sys.stderr
        self.tty = _is_terminal(self.stream) and _text_logging() if tty is None else tty
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0.0
        self.shown = False  # something was printed, so the end is printed too

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        now = self.clock()
        if self.tty:
            if now - self.start >= BAR_AFTER and now - self.last >= BAR_EVERY:
                self.last, self.shown = now, True
                self.stream.write("\r\x1b[2K" + self._text(now, note))
                self.stream.flush()
        elif now - self.last >= LINE_EVERY:
            self.last, self.shown = now, True
            logger.info("%s", self._text(now, note))

    def close(self, note: str = "") -> None:
        if not self.shown:
            return
        now = self.clock()
        if self.tty:
            self.stream.write("\r\x1b[2K" + self._text(now, note) + "\n")
            self.stream.flush()
        else:
            logger.info("%s", self._text(now, note))

    def _text(self, now: float, note: str) -> str:
        elapsed = now - self.start
        if self.total:
            share = min(self.done / self.total, 1.0)
            eta = f", {elapsed * (1 - share) / share:.0f}s left" if 0 < share < 1 else ""
            filled = int(share * WIDTH)
            bar = f" [{'#' * filled}{'.' * (WIDTH - filled)}]" if self.tty else ""
            body = f"{self.label}{bar} {100 * share:.0f}% ({_amount(self.done)}/{_amount(self.total)}{self.unit}, {elapsed:.0f}s{eta})"
        else:
            body = f"{self.label}: {_amount(self.done)}{self.unit}, {elapsed:.0f}s"
        return f"{body} {note}".rstrip()


def track(items: Iterable[T], label: str, total: int, unit: str = "") -> Iterator[T]:
    """Yield `items`, showing progress by count."""
    progress = Progress(label, total, unit)
    for count, item in enumerate(items, 1):
        yield item
        progress.update(count)
    progress.close()


def _amount(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f}G"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    return f"{x:.0f}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _text_logging() -> bool:
    """A bar would break JSON log lines: only with the text format."""
    from fedtl.common.logs import JsonFormatter

    return not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
