"""`python -m server.simulate ...` (or `fedtl simulate ...`): parse flags, simulate the federation, exit with its status."""

from __future__ import annotations

import logging
import sys

from fedtl.common.errors import FedError
from fedtl.common.logs import configure_logging
from fedtl.server.simulate.config import parse_simulation_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_simulation_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.server.log_level, prefix="sim ", fmt=cfg.server.log_format)
    from fedtl.server.simulate.app import run  # heavy imports (torch) after the flags are known to be good

    try:
        return run(cfg)
    except FedError as exc:
        logging.getLogger("simulate").error("%s", exc)
        return 2
    except Exception as exc:  # a bug: one line for the operator, the traceback at --log-level DEBUG
        log = logging.getLogger("simulate")
        log.error("internal error, please report it: %s: %s (--log-level DEBUG shows where)", type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        return 70


if __name__ == "__main__":
    sys.exit(main())
