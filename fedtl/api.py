"""The public Python API: what your own model, data and aggregation rule return or implement, and a run's history.

    from fedtl.api import Model, Data

    def build(num_classes: int) -> Model:           # --model mypackage.models:build
        return Model(backbone=my_backbone, head=torch.nn.Linear(512, num_classes))

    def data() -> Data:                             # --data mypackage.data:data
        return Data(train=train_dataset, test=test_dataset, classes=["cat", "dog"])

Functions, not base classes, wherever a function will do. An aggregation rule is the one class: subclass `Rule`,
return an `Aggregator` from `open()` (see examples/uniform_mean.py); name it with --aggregation module:Class.
`run(...)` starts a coordinator in this process and returns its `History`; `History.load(run_dir)` reads any run's.
docs/api.md has the whole story.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtl.common.config import TrainConfig
from fedtl.common.plugins import Data, Model
from fedtl.common.user_code import LocalData
from fedtl.server.strategies.base import Aggregate, Aggregator, RoundContext, Rule
from fedtl.server.strategies.mean import Accumulator
from fedtl.server.validation import Update

__all__ = ["Accumulator", "Aggregate", "Aggregator", "Data", "History", "LocalData", "Model", "RoundContext", "Rule", "TrainConfig", "Update",
           "run"]


@dataclass(frozen=True)
class History:
    """A run's rounds as the coordinator logged them: metrics, bytes and timings per round (round 0: the initial model)."""

    rounds: tuple[dict[str, Any], ...]
    run_dir: Path

    @staticmethod
    def load(run_dir: str | Path) -> History:
        folder = Path(run_dir)
        log = folder / "rounds.jsonl"
        rounds = tuple(json.loads(line) for line in log.read_text().splitlines() if line.strip()) if log.exists() else ()
        return History(rounds, folder)

    def metric(self, name: str) -> list[tuple[int, float]]:
        """(round, value) for every round that logged `name` (e.g. "test_accuracy", "train_loss", "bytes_up", or a name your
        --metric-aggregation function returned)."""
        found = [(r["round"], r.get(name, (r.get("client_metrics") or {}).get(name))) for r in self.rounds]
        return [(n, v) for n, v in found if isinstance(v, (int, float))]

    @property
    def final_accuracy(self) -> float | None:
        values = self.metric("test_accuracy")
        return values[-1][1] if values else None

    @property
    def bytes_moved(self) -> int:
        return int(sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in self.rounds))

    @property
    def model_path(self) -> Path:
        return self.run_dir / "final_model.safetensors"


def run(flags: Sequence[str] | None = None, config: str | Path | None = None, **settings: Any) -> History:
    """Run a coordinator in this process until the federation ends; clients join over gRPC as usual.

    `settings` are flags by their names (`rounds=5, min_clients=2`, `fedbn=True`), after `config` (a TOML file) and
    before `flags` (command-line words), so the most specific wins. Returns the run's History. Logs round lines as the
    command does unless the caller configured logging. Raises FedError (a bad setting, missing data: one line that says
    what to do) or RuntimeError (the run failed: where its log is)."""
    import logging

    from fedtl.common.cli import raising_flag_errors
    from fedtl.common.errors import FedError
    from fedtl.common.logs import configure_logging
    from fedtl.server.app import run as run_server
    from fedtl.server.config import parse_args

    words = [*(["--config", str(config)] if config is not None else []), *_flags(settings), *(flags or [])]
    try:
        with raising_flag_errors():
            cfg = parse_args(words)
    except FedError as exc:
        raise type(exc)(str(exc)) from None  # the message is the whole story: no traceback through our internals
    if not logging.getLogger().handlers:
        configure_logging(cfg.log_level, prefix="server ", fmt=cfg.log_format)
    try:
        code = run_server(cfg)
    except FedError as exc:
        raise type(exc)(str(exc)) from None
    history = History.load(cfg.run_dir)
    if code != 0:
        raise RuntimeError(f"the federation ended with exit status {code}; its round log is in {cfg.run_dir}")
    return history


def _flags(settings: dict[str, Any]) -> Iterable[str]:
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            yield flag
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            yield flag
            yield from (str(v) for v in value)
        else:
            yield flag
            yield str(value)
