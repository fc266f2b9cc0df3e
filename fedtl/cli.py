"""The `fedtl` command: one entry point with a subcommand per role (the wheel's console script).

    fedtl server ...   the coordinator (same flags as `python -m server`)
    fedtl client ...   a participant   (same flags as `python -m client`)
    fedtl simulate ... a federation in one process with virtual clients (same flags as `python -m simulation`)
    fedtl certs ...    development CA, certificates and tokens
    fedtl healthcheck  the gRPC health check the Docker image uses
    fedtl helper ...   the second server of two-server validated aggregation
    fedtl submit | ls | logs | stop   an operator's jobs on a standing coordinator (`fedtl server --standing`)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "server": ("fedtl.server.__main__", "run a federation's coordinator"),
    "client": ("fedtl.client.__main__", "join a federation with this machine's data"),
    "simulate": ("fedtl.simulation.__main__", "simulate a federation in one process (virtual clients, same rounds and rules)"),
    "certs": ("fedtl.server.certs", "make a development CA, server and client certificates, and tokens"),
    "healthcheck": ("fedtl.server.healthcheck", "check a coordinator's gRPC health service"),
    "helper": ("fedtl.server.helper.__main__", "run the second server of two-server validated aggregation"),
    "submit": ("fedtl.server.standing.cli:submit", "queue a job on a standing coordinator (its id is the last word printed)"),
    "ls": ("fedtl.server.standing.cli:ls", "list a standing coordinator's jobs"),
    "logs": ("fedtl.server.standing.cli:logs", "print (-f: follow) a job's log"),
    "stop": ("fedtl.server.standing.cli:stop", "stop a queued or running job"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: fedtl COMMAND [FLAGS...]\n\ncommands:\n{rows}\n\n`fedtl COMMAND --help` lists a command's flags."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from fedtl import __version__

        print(f"fedtl {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"fedtl: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[args[0]][0].partition(":")
    return int(getattr(importlib.import_module(module_name), function or "main")(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
