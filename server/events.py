"""Round events: what happens in a run, as typed records on an in-process bus.

The coordinator publishes; sinks subscribe (the JSONL round log and the console lines today; a
dashboard or metrics exporter is one more module). `publish` calls every subscriber at once, on
the event loop, in subscription order: a sink sees events in the order they happened, and the
round log is on disk before the round's checkpoint is taken. Sinks must be quick; one doing slow
I/O hands it off. Events carry values in fields; prose belongs only in `message`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fedtl.server.clock import Clock, SystemClock
from fedtl.server.records import RoundRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    ts: float = field(default=0.0, kw_only=True)  # wall-clock seconds, stamped by the bus


@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    rounds: int
    resumed: bool
    completed: int  # rounds already done (a resumed run continues after them)
    strategy: str
    address: str


@dataclass(frozen=True)
class WaitingForClients(Event):
    connected: int
    needed: int
    waited: float
    timeout: float  # 0: no limit


@dataclass(frozen=True)
class ClientJoined(Event):
    client: str
    hostname: str
    device: str
    partition: int | None
    partitions: int | None
    replaced: bool  # took over a live session of the same name
    connected: int


@dataclass(frozen=True)
class ClientLeft(Event):
    client: str
    connected: int
    awaited: bool  # the open round was still waiting for this client
    reason: str = ""  # what the client said as it left (Leave; capped at 300 characters, unescaped): "" when it just went


@dataclass(frozen=True)
class PartitionsFixed(Event):
    count: int
    scheme: str
    assigned: dict[str, int]


@dataclass(frozen=True)
class RoundOpened(Event):
    round: int
    rounds: int
    attempt: int
    selected: tuple[str, ...]
    connected: int
    target: int  # answers that close the round
    deadline: float  # seconds
    wanted: int  # clients the configuration asked for (more than connected: fewer train)


@dataclass(frozen=True)
class ClientsAdded(Event):
    """Over-selection at work: clients asked into an open round in place of ones that dropped out or were refused."""

    round: int
    clients: tuple[str, ...]


@dataclass(frozen=True)
class RoundWaiting(Event):
    """A periodic note while a phase waits: who has not answered, and how long until the deadline."""

    round: int
    phase: str
    answered: int
    target: int
    missing: tuple[str, ...]
    seconds_left: float


@dataclass(frozen=True)
class Diverging(Event):
    """The new global model's test loss left the range a learning run stays in."""

    round: int
    loss: float
    reference: float  # the initial model's test loss (or the best so far)
    message: str


@dataclass(frozen=True)
class UpdateAccepted(Event):
    round: int
    client: str
    examples: int
    bytes: int
    train_loss: float = math.nan  # as the client reported it (nan under secure aggregation: no client's own figures)
    train_seconds: float = math.nan


@dataclass(frozen=True)
class UpdateRefused(Event):
    client: str
    reason: str  # stable key: stale_round, non_finite, unauthenticated, ...
    message: str
    round: int | None = None


@dataclass(frozen=True)
class RoundClosed(Event):
    record: RoundRecord


@dataclass(frozen=True)
class RoundFailed(Event):
    round: int
    attempt: int
    attempts: int
    answered: int
    selected: int
    needed: int
    missing: tuple[str, ...]
    close_reason: str
    message: str


@dataclass(frozen=True)
class EvaluationDone(Event):
    round: int  # 0: the initial model
    loss: float
    accuracy: float
    examples: int
    seconds: float
    cache_used: bool
    cache_build_seconds: float | None  # None: the features were already in memory (or no cache)


def initial_record(event: EvaluationDone, rounds: int) -> RoundRecord:
    """Round 0 of the round log: the initial model's evaluation."""
    return RoundRecord(round=0, rounds=rounds, test_loss=event.loss, test_accuracy=event.accuracy, eval_seconds=event.seconds,
                       eval_cache_used=event.cache_used, eval_cache_build_seconds=event.cache_build_seconds)


@dataclass(frozen=True)
class CheckpointWritten(Event):
    round: int
    path: str
    bytes: int


@dataclass(frozen=True)
class RunFinished(Event):
    outcome: str  # completed | stopped | failed
    completed: int
    message: str
    final_model: str | None


@dataclass(frozen=True)
class CrossEvaluation(Event):
    """A standing coordinator's evaluation job is done: each model's accuracy on each site's held-out slice."""

    job_id: str
    models: tuple[str, ...]
    sites: tuple[str, ...]
    accuracy: dict[str, dict[str, float]]  # model -> site -> accuracy (a site that did not evaluate a model: absent)


Sink = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out on the event loop; see the module docstring for the ordering guarantee."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._sinks: list[tuple[Sink, bool]] = []

    def subscribe(self, sink: Sink, *, critical: bool = True) -> None:
        """A critical sink's failure stops the run (the round log must be written); others are logged and skipped."""
        self._sinks.append((sink, critical))

    def publish(self, event: Event) -> None:
        if not event.ts:
            event = replace(event, ts=self.clock.wall())
        for sink, critical in self._sinks:
            if critical:
                sink(event)
                continue
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a broken optional sink must not stop a federation
                logger.exception("event sink %r failed on %s", sink, type(event).__name__)
