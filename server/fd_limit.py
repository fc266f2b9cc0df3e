"""Open files: each connected client holds a socket, so the process's descriptor limit caps the federation's size.

Raised at start as far as the hard limit allows (no privilege needed); when even that is short of what
--max-clients asks for, the operator is told which limit and how to raise it."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

SPARE = 256  # files the server itself opens: checkpoints, logs, the dashboard, libraries


def raise_fd_limit(max_clients: int) -> tuple[int, int]:
    """Soft limit up to the hard one; returns (soft, hard) after. A client may share a connection, so a shortfall warns."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, (max_clients or 0) + SPARE, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            logger.debug("open-file limit raised from %d to %d", soft, wanted)
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d (%s)", soft, exc)
    if max_clients and soft != resource.RLIM_INFINITY and soft < max_clients + SPARE:
        logger.warning("--max-clients %d needs about %d open files (a socket each), but this process may open %d (hard limit %d): "
                       "raise it (ulimit -n %d, LimitNOFILE= in systemd, ulimits.nofile in compose) or lower --max-clients",
                       max_clients, max_clients + SPARE, soft, hard, max_clients + SPARE)
    return soft, hard
