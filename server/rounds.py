"""One round's state and the decisions about it: who may answer, when a phase closes, what the record says.

A round is a sequence of phases, each an exchange in which the clients still in the round send
one message: the plain FedAvg round has one ("train": the updates); a protocol such as secure
aggregation adds more (keys, shares, masked inputs, unmasking), each phase expecting only the
clients that answered the previous one. Plain Python on the event loop, with time passed in,
so the rules are easy to read and test; the run loop drives it.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from fedtl.common.config import Instruction, UpdateHeader
from fedtl.common.errors import NotSelected
from fedtl.common.metrics import ClientMetrics
from fedtl.server.records import RoundRecord
from fedtl.server.refusals import STATE_REASONS
from fedtl.server.strategies.base import Aggregator
from fedtl.server.validation import Expectation, Update, check_header

MIN_STRAGGLER_WAIT = 10.0  # seconds: the least a round waits for the rest once its quorum answered (default --straggler-wait)
class CloseReason(enum.StrEnum):
    ALL_ANSWERED = "all_answered"
    TARGET = "target_reached"
    GONE = "clients_gone"  # everyone still out disconnected, and enough had answered
    DEADLINE = "deadline"
    STRAGGLERS = "straggler_wait"  # the quorum answered, and the rest did not within --straggler-wait
    STOPPING = "stopping"
    HOPELESS = "too_few_left"  # the answers still possible cannot reach what is needed (refusals, dropouts)


@dataclass
class Phase:
    """One exchange: each expected client answers once; closes at `target` answers, when everyone left has gone
    (if `needed` answered), or at the round's deadline."""

    name: str
    expected: list[str]
    target: int
    needed: int
    instruction: Callable[[str], Instruction]  # what a client is sent when the phase opens (and again on reconnect)
    floor: int = 0  # answers without which the phase fails, whatever its target (secure aggregation's threshold)
    straggler_wait: float | None = math.inf  # after the quorum: seconds to wait for the rest (None: as long as the quorum took, >= 10 s)
    quorum_at: float | None = None  # when the quorum (`required`) had answered
    quorum: asyncio.Event = field(default_factory=asyncio.Event)  # set then: the run loop starts the straggler wait
    answered: dict[str, int] = field(default_factory=dict)  # client -> weight it claimed (examples)
    in_flight: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # expected, unanswered, disconnected (may come back)
    refused: set[str] = field(default_factory=set)  # sent something refused: out of this phase (will not come back)
    closed: bool = False
    opened_at: float = 0.0
    closed_at: float = 0.0
    close_reason: CloseReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, name: str, number: int) -> None:
        if self.closed:
            raise NotSelected("round_closed", f"round {number} ({self.name}) is closed; discarded")
        if name not in self.expected:
            raise NotSelected("not_selected", f"client {name} was not selected for round {number}")
        if name in self.answered or name in self.in_flight:
            raise NotSelected("duplicate", f"client {name} already sent its update for round {number}")
        if name in self.refused:
            raise NotSelected("refused_earlier", f"client {name}'s update for round {number} was refused; it sends again next round")

    def pending(self, name: str) -> bool:
        return not self.closed and name in self.expected and name not in self.answered and name not in self.refused

    def outstanding(self) -> set[str]:
        """Expected clients that may still answer (connected or not)."""
        return set(self.expected) - set(self.answered) - self.refused

    @property
    def required(self) -> int:
        return max(self.floor, min(self.needed, self.target))

    @property
    def can_continue(self) -> bool:
        return len(self.answered) >= self.required

    def stragglers_until(self) -> float | None:
        """When the phase closes without the clients still out, once its quorum answered (None: no quorum yet)."""
        if self.quorum_at is None:
            return None
        return self.quorum_at + (self.straggler_wait if self.straggler_wait is not None else max(MIN_STRAGGLER_WAIT, self.quorum_at - self.opened_at))

    def wakeups(self) -> tuple[asyncio.Event, ...]:
        """What ends the run loop's wait on this phase early: its closing, and the quorum that starts the straggler wait."""
        return (self.done,) if self.quorum.is_set() else (self.done, self.quorum)

    def wake_in(self, now: float, deadline: float, every: float) -> float:
        """Seconds until the next note, the straggler wait's end or the deadline: when the run loop looks again."""
        until = self.stragglers_until()
        return max(0.0, min(every, deadline - now, until - now if until is not None else every))

    def close_if_due(self, now: float) -> bool:
        """Close at the target; close early when everyone still out has gone but enough answered, or when the quorum
        answered and the rest did not within the straggler wait. With too few answers the phase stays open until its
        deadline: a restarted client picks its task up again. Whether it is closed."""
        if self.closed:
            return True
        if self.quorum_at is None and self.can_continue:
            self.quorum_at = now
            self.quorum.set()
        if len(self.answered) >= self.target:
            self.close(CloseReason.ALL_ANSWERED if self.target == len(self.expected) else CloseReason.TARGET, now)
        elif not self.in_flight and not (self.outstanding() - self.gone) and self.can_continue:
            self.close(CloseReason.GONE, now)
        elif not self.in_flight and (until := self.stragglers_until()) is not None and now >= until:
            self.close(CloseReason.STRAGGLERS, now)
        elif not self.in_flight and len(self.answered) + len(self.outstanding()) < self.required:
            self.close(CloseReason.HOPELESS, now)
        return self.closed

    def close(self, reason: CloseReason, now: float) -> None:
        self.closed, self.closed_at, self.close_reason = True, now, reason
        self.done.set()


@dataclass
class Round:
    number: int
    attempt: int
    selected: list[str]
    expectation: Expectation
    aggregator: Aggregator
    started: float
    phases: list[Phase]
    metrics: dict[str, ClientMetrics] = field(default_factory=dict)  # client -> what its update reported
    bytes_up: int = 0
    index: int = 0  # the phase now open

    def __post_init__(self) -> None:
        self.phases[0].opened_at = self.phases[0].opened_at or self.started  # the straggler wait is measured from it

    @property
    def phase(self) -> Phase:
        return self.phases[self.index]

    @property
    def train(self) -> Phase:
        """The phase that carries the updates."""
        return next(p for p in self.phases if p.name == "train")

    @property
    def closed(self) -> bool:
        return self.phase.closed

    @property
    def finished(self) -> bool:
        return self.index == len(self.phases) - 1 and self.phase.closed

    def advance(self) -> Phase:
        """Open the next phase for the clients that answered the last one."""
        answered = sorted(self.phase.answered)
        self.index += 1
        nxt = self.phase
        nxt.expected = [n for n in nxt.expected if n in answered] if nxt.expected else answered
        nxt.target = min(nxt.target, len(nxt.expected)) if nxt.target else len(nxt.expected)
        return nxt

    # ---------------------------------------------------------------- membership: the only place it changes

    def admit(self, name: str, header: UpdateHeader) -> Phase:
        """May this client start uploading this update now? Raises the precise refusal; else the upload is in flight
        in the phase returned (until `settle`)."""
        if self.phase.closed:
            raise NotSelected("round_closed", f"round {self.number} is closed (the update answers round {header.round}); discarded")
        if header.round != self.number:
            raise NotSelected("stale_round", f"update answers round {header.round}, but round {self.number} is open; discarded")
        if self.phase.name != "train":
            raise NotSelected("wrong_phase", f"round {self.number} is in its {self.phase.name} phase, not taking updates")
        self.phase.admit(name, self.number)
        check_header(self.expectation, header)
        self.phase.in_flight.add(name)
        return self.phase

    def exchange(self, name: str, round_number: int, message: object, now: float) -> None:
        """A client's message in one of the round protocol's phases (secure aggregation); raises the precise refusal."""
        protocol = self.aggregator.protocol
        if protocol is None:
            raise NotSelected("wrong_phase", f"round {self.number} takes updates only, no protocol messages")
        if round_number != self.number:
            raise NotSelected("stale_round", f"the message answers round {round_number}, but round {self.number} is open; discarded")
        phase, wanted = self.phase, protocol.phase_of(message)
        if phase.name != wanted:
            raise NotSelected("wrong_phase", f"round {self.number} is in its {phase.name} phase, not {wanted}")
        phase.admit(name, self.number)
        protocol.receive(phase.name, name, message)
        phase.answered[name] = 1
        phase.close_if_due(now)

    def accept(self, name: str, header: UpdateHeader, now: float) -> None:
        """Count a checked update in (the caller folds it, in order, before anyone reads the aggregate); the phase closes
        at its target, so later updates are refused while this one folds."""
        self.train.answered[name] = header.num_examples
        self.metrics[name] = header.metrics
        self.bytes_up += header.total_bytes
        self.train.close_if_due(now)

    def fold(self, name: str, update: Update, weight: float) -> None:
        """Into the aggregate: on the single FIFO fold thread, so no accepted update is ever half-counted."""
        self.aggregator.add(name, update, weight)

    def unaccept(self, name: str, header: UpdateHeader) -> None:
        """The rule refused an accepted update as it folded: it is not in the aggregate, so not in the round's count."""
        self.train.answered.pop(name, None)
        self.metrics.pop(name, None)
        self.bytes_up -= header.total_bytes

    def settle(self, name: str, phase: Phase, now: float) -> None:
        """An upload is over, taken or not: the phase stops waiting for it and may close."""
        phase.in_flight.discard(name)
        phase.close_if_due(now)

    def refuse(self, name: str, reason: str) -> bool:
        """A client sent what no honest client sends, or withdrew: it is out of this round, which need not wait for it.
        Refusals that say nothing against the client (STATE_REASONS) change nothing. True when the client is now out."""
        if reason in STATE_REASONS or not self.phase.pending(name):
            return False
        self.phase.refused.add(name)
        return True

    def leave(self, name: str) -> bool:
        """A client disconnected. True when the open phase awaited it: it may come back (`rejoin`) until the deadline."""
        if not self.phase.pending(name):
            return False
        self.phase.gone.add(name)
        return True

    def rejoin(self, name: str) -> Instruction | None:
        """A client reconnected: what it must do again (its task, or the phase's message), when the phase awaits it."""
        if not self.phase.pending(name):
            return None
        self.phase.gone.discard(name)
        return self.phase.instruction(name)

    def shortfall(self) -> int:
        """How many more clients the open phase needs asked to reach its target, with those out or gone not counting.
        Only a one-phase round takes newcomers: a protocol's participants are fixed when it starts."""
        phase = self.phase
        if phase.closed or len(self.phases) > 1:
            return 0
        return max(0, phase.target - len(phase.answered) - len(phase.outstanding() - phase.gone))

    def add(self, names: list[str]) -> None:
        """Spare clients asked in (over-selection)."""
        self.selected.extend(names)
        self.phase.expected.extend(names)

    def pending(self, name: str) -> bool:
        return self.phase.pending(name)

    def record(self, rounds_total: int, bytes_down: int) -> RoundRecord:
        """The round's line in the log: example-weighted client metrics, bytes, who answered."""
        answers = self.train.answered
        answered = sorted(answers)
        reports = [self.metrics[c] for c in answered]

        def weighted(value: Callable[[ClientMetrics], float | None], weight: Callable[[str], float | None]) -> float:
            """The mean of a reported figure, weighted (by examples trained, or held-out examples evaluated)."""
            pairs = [(v, w) for c in answered if (v := value(self.metrics[c])) is not None and (w := weight(c))]
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if total else math.nan

        examples = answers.get  # each answer's weight: the examples it trained on

        def held_out(client: str) -> float | None:
            return self.metrics[client].eval_examples

        def worst_decile(value: Callable[[ClientMetrics], float | None]) -> float:
            """The mean of the worst 10 % of the answering clients' figures (at least one client): who the model fails."""
            values = sorted(v for m in reports if (v := value(m)) is not None)
            return sum(values[: math.ceil(len(values) / 10)]) / math.ceil(len(values) / 10) if values else math.nan

        builds = [m.cache_build_seconds_train for m in reports if m.cache_build_seconds_train is not None]
        spent = [m.epsilon for m in reports if m.epsilon is not None]
        stats = self.aggregator.stats()
        return RoundRecord(
            round=self.number, rounds=rounds_total, selected=len(self.selected), answered=len(answered),
            examples=sum(answers.values()), train_loss=weighted(lambda m: m.train_loss, examples),
            train_accuracy=weighted(lambda m: m.train_accuracy, examples),
            client_eval_accuracy=weighted(lambda m: m.eval_accuracy, held_out),
            client_personal_accuracy=weighted(lambda m: m.personal_accuracy, held_out),
            client_eval_worst_decile=worst_decile(lambda m: m.eval_accuracy),
            client_personal_worst_decile=worst_decile(lambda m: m.personal_accuracy),
            bytes_down=bytes_down, bytes_up=self.bytes_up, upload_codec=min(self.expectation.encodings), attempt=self.attempt,
            close_reason=self.train.close_reason.value if self.train.close_reason else "",
            clipped=stats.get("clipped", 0), capped=stats.get("capped", 0), clients=answered,
            clients_cached=sum(1 for m in reports if m.feature_cache),
            client_cache_build_seconds=max(builds) if builds else None, record_epsilon=max(spent) if spent else math.nan,
        )
