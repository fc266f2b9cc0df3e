"""`python -m server.helper` (`fedtl helper`): the second server of two-server validated aggregation.

Run it where the coordinator's operator cannot read its memory (another organisation, another machine): privacy rests
on the two servers not colluding. Clients authenticate with the tokens they use with the coordinator; the coordinator
with the leader token.

    python -m server.helper --address 0.0.0.0:50052 --tls-cert helper.pem --tls-key helper.key \\
        --tokens-file tokens.txt --leader-token "$(cat leader-token)"
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from fedtl.common.cli import Parser
from fedtl.common.errors import ConfigError
from fedtl.common.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m server.helper", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1:50052", help="HOST:PORT to listen on (0.0.0.0:50052 for other machines)")
    p.add_argument("--tls-cert", type=Path, help="the helper's certificate (PEM); with --tls-key")
    p.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    p.add_argument("--token", default=os.environ.get("FEDTL_TOKEN"), help="the clients' shared token (env FEDTL_TOKEN)")
    p.add_argument("--tokens-file", type=Path, help="the clients' per-client tokens, as the coordinator reads them")
    p.add_argument("--leader-token", default=os.environ.get("FEDTL_LEADER_TOKEN"),
                   help="the coordinator's token, its --helper-token (env FEDTL_LEADER_TOKEN); only it may bind, open and sum")
    p.add_argument("--max-clients", type=int, default=1000, help="deposits held for one round")
    p.add_argument("--allow-insecure", action="store_true", help="run without TLS or tokens (a test on one machine only)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        from fedtl.server.auth import Authenticator

        clients = Authenticator.from_files(a.token, a.tokens_file)
        if (a.tls_cert is None) != (a.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if not a.allow_insecure and (a.tls_cert is None or not clients.enabled or not a.leader_token):
            raise ConfigError("a helper needs --tls-cert/--tls-key, client tokens (--token or --tokens-file) and --leader-token; "
                              "--allow-insecure runs without them, for a test on one machine")
        if a.leader_token is not None and len(a.leader_token) < 16:
            raise ConfigError("--leader-token: at least 16 characters (python -m server.certs prints a random one)")
        if a.max_clients < 1:
            raise ConfigError("--max-clients must be >= 1")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(a.log_level, prefix="helper ")
    from fedtl.server.helper.service import serve
    from fedtl.server.helper.state import HelperState

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        tls = (a.tls_cert, a.tls_key) if a.tls_cert else None
        await serve(a.address, HelperState(a.max_clients), clients, a.leader_token, tls, stop)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        logging.getLogger("fedtl.helper").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
