"""`python -m server.simulate` is now `python -m simulation` (or `fedtl simulate`): one line that says so."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    print("error: the simulator moved: run `python -m simulation ...` (or `fedtl simulate ...`) with the same flags", file=sys.stderr)
    sys.exit(2)
