"""What the server's and the client's command lines share: help that shows real defaults, and checks of the
files and folders a user names, so a wrong path is one line naming the flag, never a traceback later."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import difflib
import errno
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from fedtl.common.errors import ConfigError, FedError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only where there is a default to show (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or help_text


_RAISING = contextvars.ContextVar("raising_flag_errors", default=False)


@contextlib.contextmanager
def raising_flag_errors() -> Iterator[None]:
    """Inside: a refused flag raises ConfigError instead of printing and exiting (the Python API's callers keep running)."""
    token = _RAISING.set(True)
    try:
        yield
    finally:
        _RAISING.reset(token)


class Parser(argparse.ArgumentParser):
    """A flag refused is one line that names it, and where to look: argparse's own would print the whole usage first
    (over a hundred lines for the server), burying the line that matters."""

    def error(self, message: str) -> NoReturn:
        hint = self._did_you_mean(message) or f"{self.prog} --help lists every flag"
        if _RAISING.get():
            raise ConfigError(f"{message} ({hint})")
        self.exit(2, f"{self.prog}: error: {message} ({hint})\n")

    def _did_you_mean(self, message: str) -> str:
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        for word in message.split(":", 1)[1].split():
            if word.startswith("--") and (close := difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)):
                return f"did you mean {close[0]}?"
        return ""


def prog(command: str, module: str) -> str:
    """How the user ran us, for usage lines: `fedtl server`, or `python -m server` from a checkout."""
    return f"fedtl {command}" if Path(sys.argv[0]).name == "fedtl" else f"python -m {module}"


def check_folder(flag: str, path: Path | None) -> None:
    """A folder we will create or write into must not be a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder; name a folder (it is created if missing)")


def check_file(flag: str, path: Path | None, pem: str = "") -> None:
    """A file we will read must exist, be readable, and (for `pem`, e.g. 'CERTIFICATE') hold that PEM block."""
    if path is None:
        return
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        head = path.read_bytes()[:1 << 16]
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if pem and f"-----BEGIN {pem}".encode() not in head and not (pem == "PRIVATE KEY" and b"PRIVATE KEY-----" in head):
        raise ConfigError(f"{flag} {path}: not a PEM {pem.lower()} (no '-----BEGIN {pem}' line); python -m server.certs makes them")


DISK = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up", errno.EACCES: "permission denied",
        errno.EPERM: "not permitted", errno.EROFS: "the file system is read-only"}


def describe_failure(exc: BaseException) -> str:
    """One line for what stopped a run: for a disk that refuses a write, the path and what it needs."""
    if isinstance(exc, OSError) and exc.errno in DISK:
        where = exc.filename or "a file under the run folder"
        need = ("free space there, or point --run-dir (and --data-cache) at a disk that has it" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "make it writable for this user, or point --run-dir (and --data-cache) elsewhere")
        return f"{DISK[exc.errno]} at {where}: {need}"
    return f"{type(exc).__name__}: {exc}"


def run_reporting(run: Callable[[], int], logger_name: str) -> int:
    """Run a command's body: a FedError (the user's to fix) or a disk that refuses a write is one line and exit 2; a bug
    is one line and exit 70, with the traceback at --log-level DEBUG. Anything else (a BaseException: a signal's
    unwinding) passes through."""
    log = logging.getLogger(logger_name)
    try:
        return run()
    except FedError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        if exc.errno not in DISK:
            return _report_bug(log, exc)
        log.error("%s", describe_failure(exc))
        return 2
    except Exception as exc:
        return _report_bug(log, exc)


def _report_bug(log: logging.Logger, exc: BaseException) -> int:
    log.error("internal error, please report it: %s: %s (--log-level DEBUG shows where)", type(exc).__name__, exc)
    log.debug("traceback", exc_info=exc)
    return 70
