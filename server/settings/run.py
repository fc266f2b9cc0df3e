"""Where a run keeps its files, what it does with an earlier run there, and how it logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedtl.common.logs import FORMATS, LEVELS
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="checkpoints and round logs go here")
    g.add_argument("--output", type=Path, default=None, help="final model file (default: RUN_DIR/final_model.safetensors)")
    g.add_argument("--resume", choices=("auto", "never", "if-same"), default="auto",
                   help="auto: continue from RUN_DIR's checkpoint when there is one (and refuse one of a run with other settings); "
                        "if-same: continue it only when its settings are these, else start a new run; never: start a new run "
                        "(the earlier run's files go to RUN_DIR/previous/)")
    g.add_argument("--keep-round-models", action="store_true", help="also keep the global model of every round in RUN_DIR/models/")
    g.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS, help="how much the server logs")
    g.add_argument("--log-format", default="text", choices=FORMATS, help="text lines, or json: one object a line (ts, level, event, fields)")


SECTION = Section("run", "run", add_flags)
