"""`python -m client --server HOST:PORT ...`: join a federation and train until the server says it is over."""

from __future__ import annotations

import logging
import os
import signal
import sys

# gRPC's core logs handshake failures (a plaintext client, a port scan) as raw ssl_transport_security lines;
# the outcome reaches our own log with what to do. GRPC_VERBOSITY=INFO (or DEBUG) brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from fedtl.client.config import parse_args
from fedtl.common.cli import run_reporting
from fedtl.common.errors import FedError, Terminated
from fedtl.common.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, prefix=f"client[{cfg.name}] ", fmt=cfg.log_format)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave)
    from fedtl.client.app import ClientApp  # heavy imports (torch) after the flags are known to be good

    try:
        return run_reporting(lambda: ClientApp(cfg).run(), "client")
    except (Terminated, KeyboardInterrupt):
        logging.getLogger("client").warning("stopped by signal; leaving the federation")
        return 130


def _leave(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C: unwind, so the channel closes and the server sees the client leave at once."""
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the unwinding
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
