"""The client's identity: a random secret made on first start and kept in its work directory.

It travels in every Hello (over TLS in any real deployment); the server keeps only its digest and binds
the client's name to it on first join, so another process cannot take over this name (and its shard)
without the file, while this client, restarted, is recognised as itself.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fedtl.common.errors import ConfigError

FILE = "identity"


def load_or_create(workdir: Path) -> str:
    path = workdir / FILE
    try:
        if path.is_file():
            value = path.read_text().strip()
            if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
                return value
        workdir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value
    except OSError as exc:
        raise ConfigError(f"--workdir {workdir}: cannot keep this client's identity there ({exc.strerror})") from None
