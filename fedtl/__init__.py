"""fedtl: federated transfer learning over gRPC.

Installed, the distribution claims only this name: the repository's top-level folders become
`fedtl.server`, `fedtl.client`, `fedtl.common` and `fedtl.protos` (pyproject.toml's package-dir).
Run from a checkout (`python -m server`, the Docker image's /app), this file maps them the same way,
so code and tests import one set of names wherever they run.
"""

from __future__ import annotations

from pathlib import Path

_here = Path(__file__).resolve().parent
_checkout = _here.parent
if not (_here / "server").is_dir() and (_checkout / "server" / "__main__.py").is_file() and (_checkout / "common" / "tensorcodec.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # a checkout: fedtl.server is ./server

__version__ = "0.2.0"
