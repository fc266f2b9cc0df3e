"""One record per round: a human line in the server log and a JSON line in RUN_DIR/rounds.jsonl."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger("fedtl.rounds")


@dataclass
class RoundRecord:
    round: int
    rounds: int
    selected: int = 0
    answered: int = 0
    examples: int = 0
    train_loss: float = math.nan
    train_accuracy: float = math.nan
    test_loss: float = math.nan
    test_accuracy: float = math.nan
    client_eval_accuracy: float = math.nan  # federated evaluation: global model on clients' held-out slices
    client_personal_accuracy: float = math.nan
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0  # round duration: selection to checkpoint
    elapsed: float = 0.0  # since the start of round 1 (time to accuracy)
    eval_seconds: float = 0.0
    feature_cache: str = ""  # server evaluation: "off (reason)" or "on (built in X s)"
    client_feature_cache: str = ""  # how many answering clients trained on cached features, and their build time
    attempt: int = 1
    close_reason: str = ""
    rejected: dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    clients: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each part of the round

    def line(self) -> str:
        if self.round == 0:
            return f"round 0/{self.rounds} (initial model) | test loss {self.test_loss:.4f} acc {_pct(self.test_accuracy)} | eval {self.eval_seconds:.2f}s | cache {self.feature_cache}"
        parts = [
            f"round {self.round}/{self.rounds}",
            f"clients {self.answered}/{self.selected}",
            f"train loss {self.train_loss:.4f}",
            f"test loss {self.test_loss:.4f} acc {_pct(self.test_accuracy)}",
        ]
        if not math.isnan(self.client_eval_accuracy):
            personal = "" if math.isnan(self.client_personal_accuracy) else f" personal {_pct(self.client_personal_accuracy)}"
            parts.append(f"clients' held-out acc {_pct(self.client_eval_accuracy)}{personal}")
        parts.append(f"down {_mb(self.bytes_down)} up {_mb(self.bytes_up)}")
        parts.append(f"{self.seconds:.2f}s")
        if self.feature_cache or self.client_feature_cache:
            parts.append(f"cache eval {self.feature_cache or 'n/a'}, clients {self.client_feature_cache or 'n/a'}")
        if self.rejected:
            parts.append("rejected " + ",".join(f"{k}={v}" for k, v in sorted(self.rejected.items())))
        if self.clipped:
            parts.append(f"clipped {self.clipped}")
        if self.attempt > 1:
            parts.append(f"attempt {self.attempt}")
        return " | ".join(parts)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


class RoundLog:
    """Appends records durably; on resume, drops records past the checkpoint so no round appears twice."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: RoundRecord) -> None:
        logger.info("%s", record.line())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(record).items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(data, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start_fresh(self) -> None:
        """A new run gets its own log; a log left by an earlier run in this folder is kept aside, not appended to."""
        if self.path.exists() and self.path.stat().st_size:
            aside = self.path.with_name(f"{self.path.stem}.{int(time.time())}.previous{self.path.suffix}")
            self.path.rename(aside)
            logging.getLogger(__name__).warning("starting a new run: the previous round log was moved to %s", aside)

    def truncate_after(self, last_round: int) -> int:
        """Keep records up to `last_round` (the checkpoint's); return how many were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["round"] <= last_round:
                    kept.append(line)
                    continue
            except (ValueError, KeyError, TypeError):
                pass
            dropped += 1
        if dropped:
            from common.checkpoint import write_bytes_atomic

            write_bytes_atomic(self.path, ("\n".join(kept) + "\n" if kept else "").encode())
        return dropped

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
