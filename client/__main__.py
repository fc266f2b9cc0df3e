"""`python -m client --server HOST:PORT ...`: join a federation and train until the server says it is over."""

from __future__ import annotations

import logging
import signal
import sys

from client.config import parse_args
from common.errors import FedError
from common.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except FedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, prefix=f"client[{cfg.name}] ")
    signal.signal(signal.SIGTERM, _leave)
    from client.app import ClientApp  # heavy imports (torch) after the flags are known to be good

    try:
        return ClientApp(cfg).run()
    except KeyboardInterrupt:
        logging.getLogger("client").warning("stopped by signal; leaving the federation")
        return 130
    except FedError as exc:
        logging.getLogger("client").error("%s", exc)
        return 2


def _leave(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so the channel closes and the server sees the client leave at once."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
