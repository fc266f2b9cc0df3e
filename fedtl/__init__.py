"""fedtl: federated transfer learning over gRPC.

Installed, the distribution claims only this name: the repository's top-level folders become `fedtl.server`,
`fedtl.client`, `fedtl.common`, `fedtl.protos` and `fedtl.simulation` (pyproject.toml's package-dir). In a checkout,
fedtl/<name> is a link to ../<name>, so Python, mypy and IDEs resolve the same names from the same files. Where links
did not survive (an archive unpacked without them), the checkout itself joins this package's path instead.
"""

from __future__ import annotations

from pathlib import Path

_here = Path(__file__).resolve().parent
_checkout = _here.parent
if not (_here / "server").is_dir() and (_checkout / "server" / "__main__.py").is_file() and (_checkout / "common" / "tensorcodec.py").is_file():
    __path__.append(str(_checkout))  # a checkout without its links: fedtl.server is ./server

__version__ = "0.2.0"
