"""RUN_DIR/rounds.jsonl: one JSON object per completed round (and round 0, the initial model), durably.

Each record carries values in fields, a `ts` (unix seconds) and the human line as `message`. A new
run moves an earlier run's log aside; a resumed run drops records past its checkpoint, so no round
appears twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fedtl.common.checkpoint import write_bytes_atomic
from fedtl.server.events import EvaluationDone, Event, RoundClosed, RunStarted, initial_record
from fedtl.server.records import RoundRecord

logger = logging.getLogger(__name__)


class RoundLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.rounds = event.rounds
            if event.resumed:  # at round 0 its record goes too: the initial evaluation runs again
                dropped = self.truncate_after(event.completed if event.completed else -1)
                if dropped:
                    logger.info("dropped %d round-log lines past the checkpoint's round %d", dropped, event.completed)
            else:
                self.start_fresh(event.ts)
        elif isinstance(event, RoundClosed):
            self.append(event.record, event.ts)
        elif isinstance(event, EvaluationDone) and event.round == 0:
            self.append(initial_record(event, self.rounds), event.ts)

    def append(self, record: RoundRecord, ts: float) -> None:
        data = {**record.to_json(), "ts": round(ts, 3), "message": record.line()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(data, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start_fresh(self, ts: float) -> None:
        """A new run gets its own log; a log left by an earlier run in this folder is kept aside, not appended to."""
        if self.path.exists() and self.path.stat().st_size:
            aside = self.path.with_name(f"{self.path.stem}.{int(ts)}.previous{self.path.suffix}")
            self.path.rename(aside)
            logger.warning("starting a new run: the previous round log was moved to %s", aside)

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
            write_bytes_atomic(self.path, ("\n".join(kept) + "\n" if kept else "").encode())
        return dropped

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
