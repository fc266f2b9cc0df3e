"""Logging set-up, called once by each __main__; modules only ever call logging.getLogger(__name__)."""

from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(level: str = "INFO", prefix: str = "") -> None:
    """Human-readable lines on stderr: time, level, where, message."""
    fmt = f"%(asctime)s.%(msecs)03d %(levelname)-7s {prefix}%(name)s: %(message)s"
    if level.upper() not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("PIL", "urllib3", "asyncio", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
