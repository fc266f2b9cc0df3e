"""One round's state and the decisions about it: who may upload, when it closes, what its record says.

Plain Python on the event loop (no I/O, no clocks passed in implicitly), so the rules are easy to
read and test; the coordinator drives it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from common.config import TrainTask, UpdateHeader
from common.errors import NotSelected
from server.aggregation import Accumulator
from server.round_log import RoundRecord
from server.validation import Expectation, check_header

_WIRE_REASONS = {"TruncatedError": "truncated", "DigestMismatch": "digest_mismatch", "OversizeError": "oversize", "CorruptError": "corrupt"}


def reason_of(exc: Exception) -> str:
    """Stable short key for the round log's count of refused requests."""
    return getattr(exc, "reason", None) or _WIRE_REASONS.get(type(exc).__name__, type(exc).__name__)


@dataclass
class Round:
    number: int
    attempt: int
    selected: list[str]
    target: int  # answers that close the round (fewer than selected under over-selection)
    min_fit: int  # answers needed to aggregate at all
    expectation: Expectation
    task: Callable[[str], TrainTask]
    accumulator: Accumulator
    started: float
    answered: dict[str, int] = field(default_factory=dict)  # client -> examples
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # selected, unanswered, disconnected
    clipped: int = 0
    bytes_up: int = 0
    closed: bool = False
    closed_at: float = 0.0
    close_reason: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, name: str, header: UpdateHeader) -> None:
        """May this client start uploading this update now? Raises the precise refusal."""
        if self.closed:
            raise NotSelected("round_closed", f"round {self.number} is closed (the update answers round {header.round}); discarded")
        if header.round != self.number:
            raise NotSelected("stale_round", f"update answers round {header.round}, but round {self.number} is open; discarded")
        if name not in self.selected:
            raise NotSelected("not_selected", f"client {name} was not selected for round {self.number}")
        if name in self.answered or name in self.uploading:
            raise NotSelected("duplicate", f"client {name} already sent its update for round {self.number}")
        check_header(self.expectation, header)

    def accept(self, name: str, header: UpdateHeader, clipped: bool) -> None:
        """Count a checked update in; the caller folds it (in order) before anyone reads the aggregate."""
        self.answered[name] = header.num_examples
        self.metrics[name] = dict(header.metrics)
        self.bytes_up += header.total_bytes
        self.clipped += int(clipped)

    def pending(self, name: str) -> bool:
        return not self.closed and name in self.selected and name not in self.answered

    def close_if_due(self) -> None:
        """Close at the target; close early when everyone still out has gone but enough answered to aggregate.
        With too few answers the round stays open until its deadline: a restarted client picks its task up again."""
        if self.closed:
            return
        if len(self.answered) >= self.target:
            self.close("all selected answered" if self.target == len(self.selected) else f"target of {self.target} reached")
        elif not self.uploading and not (set(self.selected) - set(self.answered) - self.gone) and self.can_aggregate:
            self.close(f"{len(self.gone)} selected client(s) disconnected")

    @property
    def can_aggregate(self) -> bool:
        return len(self.answered) >= min(self.min_fit, self.target)

    def close(self, reason: str) -> None:
        self.closed = True
        self.closed_at = time.monotonic()
        self.close_reason = reason
        self.done.set()

    def record(self, rounds_total: int, bytes_down: int) -> RoundRecord:
        """The round's line in the log: example-weighted client metrics, bytes, who answered."""
        answered = sorted(self.answered)

        def weighted(key: str, weight_key: str | None = None) -> float:
            pairs = [(self.metrics[c].get(key), self.metrics[c].get(weight_key) if weight_key else self.answered[c]) for c in answered]
            pairs = [(v, w) for v, w in pairs if v is not None and w]
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if total else math.nan

        users = sum(1 for c in answered if self.metrics[c].get("feature_cache"))
        builds = [self.metrics[c]["cache_build_seconds_train"] for c in answered if "cache_build_seconds_train" in self.metrics[c]]
        return RoundRecord(
            round=self.number, rounds=rounds_total, selected=len(self.selected), answered=len(answered),
            examples=sum(self.answered.values()), train_loss=weighted("train_loss"), train_accuracy=weighted("train_accuracy"),
            client_eval_accuracy=weighted("eval_accuracy", "eval_examples"),
            client_personal_accuracy=weighted("personal_accuracy", "eval_examples"),
            bytes_down=bytes_down, bytes_up=self.bytes_up, attempt=self.attempt, close_reason=self.close_reason,
            clipped=self.clipped, clients=answered,
            client_feature_cache=f"{users}/{len(answered)}" + (f" (built in up to {max(builds):.2f}s)" if builds else ""),
        )
