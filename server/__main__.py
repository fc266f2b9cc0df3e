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
    if cfg.standing is not None:  # heavy imports (torch) after the flags are known to be good
        from fedtl.server.standing.service import run_standing

        return run_reporting(lambda: run_standing(cfg, sys.argv[1:] if argv is None else argv), "server")
    from fedtl.server.app import run

    return run_reporting(lambda: run(cfg), "server")


if __name__ == "__main__":
    sys.exit(main())
