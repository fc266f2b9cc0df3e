"""`python -m server ...`: parse flags, run the federation, exit with its status."""

from __future__ import annotations

import logging
import sys

from common.errors import FedError
from common.logs import configure_logging
from server.config import parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, prefix="server ")
    from server.app import run  # heavy imports (torch) after the flags are known to be good

    try:
        return run(cfg)
    except FedError as exc:
        logging.getLogger("server").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
