"""`python -m server ...`: parse flags, run the federation, exit with its status."""

from __future__ import annotations

import os
import sys

# gRPC's core logs handshake failures (a plaintext client, a port scan) as raw ssl_transport_security lines;
# the outcome reaches our own log with what to do. GRPC_VERBOSITY=INFO (or DEBUG) brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from fedtl.common.cli import run_reporting
from fedtl.common.errors import FedError
from fedtl.common.logs import configure_logging
from fedtl.server.config import parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, prefix="server ", fmt=cfg.log_format)
    from fedtl.server.app import run  # heavy imports (torch) after the flags are known to be good

    return run_reporting(lambda: run(cfg), "server")


if __name__ == "__main__":
    sys.exit(main())
