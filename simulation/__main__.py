"""`python -m simulation ...` (or `fedtl simulate ...`): parse flags, simulate the federation, exit with its status."""

from __future__ import annotations

import sys

from fedtl.common.cli import run_reporting
from fedtl.common.errors import FedError
from fedtl.common.logs import configure_logging
from fedtl.simulation.config import parse_simulation_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_simulation_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.server.log_level, prefix="sim ", fmt=cfg.server.log_format)
    from fedtl.simulation.app import run  # heavy imports (torch) after the flags are known to be good

    return run_reporting(lambda: run(cfg), "simulate")


if __name__ == "__main__":
    sys.exit(main())
