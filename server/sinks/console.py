"""The server's human log: one line per event that an operator watches for (round lines under `fedtl.rounds`)."""

from __future__ import annotations

import logging

from fedtl.common.logs import CURRENT_EVENT
from fedtl.server.events import (
    CheckpointWritten,
    ClientJoined,
    ClientLeft,
    ClientsAdded,
    Diverging,
    EvaluationDone,
    Event,
    PartitionsFixed,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    RoundWaiting,
    RunFinished,
    RunStarted,
    UpdateRefused,
    WaitingForClients,
    initial_record,
)

logger = logging.getLogger("fedtl.run")  # the run as an operator follows it
rounds_logger = logging.getLogger("fedtl.rounds")
REFUSAL_WINDOW = 10.0  # seconds: a few refusal lines per reason in a window, the rest counted
REFUSAL_LINES = 5


def safe(text: str, limit: int = 300) -> str:
    """A string a client sent, fit for one log line: control characters escaped (no forged lines), length capped."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


class ConsoleLog:
    def __init__(self) -> None:
        self.rounds = 0
        self._refusals: dict[str, list[float]] = {}  # reason -> [window start, lines logged in it, refusals not logged]

    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"_{type(event).__name__}", None)
        if handler is not None:
            token = CURRENT_EVENT.set(event)  # --log-format json: the line carries the event's fields too
            try:
                handler(event)
            finally:
                CURRENT_EVENT.reset(token)

    def _RunStarted(self, e: RunStarted) -> None:
        self.rounds = e.rounds
        if e.resumed:
            logger.info("resuming run %s after round %d/%d; strategy %s", e.run_id, e.completed, e.rounds, e.strategy)
        else:
            logger.info("run %s: %d rounds; strategy %s", e.run_id, e.rounds, e.strategy)

    def _WaitingForClients(self, e: WaitingForClients) -> None:
        limit = f"giving up after {e.timeout:g}s (--wait-timeout)" if e.timeout else "no time limit: --wait-timeout SECONDS bounds it"
        logger.info("waiting for clients: %d/%d connected after %.0fs (%s)", e.connected, e.needed, e.waited, limit)

    def _ClientJoined(self, e: ClientJoined) -> None:
        where = f" partition {e.partition}/{e.partitions}" if e.partition is not None else ""
        logger.info("client %s connected (%s, %s)%s%s; %d connected", safe(e.client), safe(e.hostname) or "?", safe(e.device) or "?",
                    where, " replacing its previous session" if e.replaced else "", e.connected)

    def _ClientLeft(self, e: ClientLeft) -> None:
        if e.reason:
            logger.info("client %s left: %s; %d connected", e.client, safe(e.reason), e.connected)
            return
        logger.info("client %s disconnected%s; %d connected", e.client, " (the open round still awaits it)" if e.awaited else "",
                    e.connected)

    def _PartitionsFixed(self, e: PartitionsFixed) -> None:
        if e.assigned:
            logger.info("training split divided into %d %s partitions: %s", e.count, e.scheme,
                        ", ".join(f"{n}={i}" for n, i in e.assigned.items()))

    def _RoundOpened(self, e: RoundOpened) -> None:
        if e.wanted > e.connected:
            logger.warning("round %d asks for %d clients but only %d are connected: it trains with %d "
                           "(--clients-per-round / --fraction / --min-fit-clients)", e.round, e.wanted, e.connected, len(e.selected))
        logger.info("round %d/%d%s: selected %d of %d connected (%s), closes at %d updates or after %gs", e.round, e.rounds,
                    f" attempt {e.attempt}" if e.attempt > 1 else "", len(e.selected), e.connected, ", ".join(e.selected[:8]),
                    e.target, e.deadline)

    def _ClientsAdded(self, e: ClientsAdded) -> None:
        logger.info("round %d: asked %s in, in place of selected clients that dropped out or were refused (--over-select)", e.round,
                    ", ".join(e.clients))

    def _RoundWaiting(self, e: RoundWaiting) -> None:
        logger.info("round %d (%s): %d of %d answers; waiting for %s; deadline in %.0fs (--round-timeout)", e.round, e.phase,
                    e.answered, e.target, ", ".join(e.missing[:8]) + (f" and {len(e.missing) - 8} more" if len(e.missing) > 8 else ""),
                    e.seconds_left)

    def _Diverging(self, e: Diverging) -> None:
        logger.warning("%s", e.message)

    def _UpdateRefused(self, e: UpdateRefused) -> None:
        """A few lines per reason per window: a flood of refusals (unauthenticated calls, garbage) cannot flood the log."""
        window = self._refusals.setdefault(e.reason, [-REFUSAL_WINDOW, 0, 0])
        if e.ts - window[0] >= REFUSAL_WINDOW:
            self._flush(e.reason)
            window[:] = [e.ts, 0, 0]
        if window[1] >= REFUSAL_LINES:
            window[2] += 1
            return
        window[1] += 1
        if e.reason == "withdrew":  # a client leaving a protocol round, with its own reason (capped and escaped)
            logger.warning("%s", safe(e.message))
            return
        what = {"unauthenticated": "call", "join_refused": "join"}.get(e.reason, "update")
        logger.warning("refused %s from client %s: %s", what, safe(e.client, 130), safe(e.message))

    def _flush(self, reason: str) -> None:
        window = self._refusals.get(reason)
        if window and window[2]:
            logger.warning("refused %d more (%s) without a line each", window[2], reason)
            window[2] = 0

    def _RoundClosed(self, e: RoundClosed) -> None:
        for reason in list(self._refusals):
            self._flush(reason)
        rounds_logger.info("%s", e.record.line())

    def _RoundFailed(self, e: RoundFailed) -> None:
        logger.warning("%s; attempt %d of %d", e.message, e.attempt, e.attempts)

    def _EvaluationDone(self, e: EvaluationDone) -> None:
        if e.round == 0:
            rounds_logger.info("%s", initial_record(e, self.rounds).line())

    def _CheckpointWritten(self, e: CheckpointWritten) -> None:
        logger.debug("checkpoint after round %d written: %s (%.1f MB)", e.round, e.path, e.bytes / 1e6)

    def _RunFinished(self, e: RunFinished) -> None:
        (logger.error if e.outcome == "failed" else logger.info)("%s", e.message)
