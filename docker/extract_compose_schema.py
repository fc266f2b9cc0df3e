"""Refresh docker/compose-spec.json: the Compose Specification's JSON schema, as docker compose embeds it.

    python docker/extract_compose_schema.py [PLUGIN] > docker/compose-spec.json

The compose v2 plugin (a Go binary) embeds compose-go's schema/compose-spec.json verbatim; this copies it
out, so tests validate against exactly the schema of the compose that runs the file. The vendored copy
came from Debian's docker-compose 2.26.1-4 (/usr/local/lib/docker/cli-plugins/docker-compose, installed
by ../shared/docker/engine.sh). Tests need no network and no Docker to use it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path("/usr/local/lib/docker/cli-plugins/docker-compose")


def extract(binary: bytes) -> str:
    marker = binary.find(b'"title": "Compose Specification"')
    if marker < 0:
        raise SystemExit("no Compose Specification schema found in that binary")
    start = binary.rfind(b"{\n", 0, marker)
    text = binary[start:].decode("utf-8", errors="replace")
    _, end = json.JSONDecoder().raw_decode(text)
    return text[:end] + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    sys.stdout.write(extract(path.read_bytes()))
