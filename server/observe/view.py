"""The run as the dashboard shows it, folded from round events, with a journal for catching up.

Every change is a delta that carries the whole new object for one key (the run, one round, one client,
one notice), so applying a delta twice changes nothing: a page that reconnects with Last-Event-ID gets
the deltas it missed, or a full snapshot when the journal no longer reaches back that far. The sink runs
on the coordinator's loop and the web server on its own thread, hence the lock; listeners are told
(from the coordinator's thread) that something new is there and fetch it themselves.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from fedtl.server import events as ev

JOURNAL = 4096  # deltas kept for catching up; an older Last-Event-ID gets a snapshot instead
NOTICES = 50
TEXT = 300  # characters kept of any message (they can carry what a client sent)

Delta = tuple[int, str, str]  # (id, kind, JSON payload)


class RunView:
    def __init__(self, run_dir: Path, final_model: Path, journal: int = JOURNAL) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._journal: deque[Delta] = deque(maxlen=journal)
        self._listeners: list[Callable[[], None]] = []
        self.run: dict = {"status": "starting", "run_dir": str(run_dir), "round_log": str(run_dir / "rounds.jsonl"),
                          "final_model": str(final_model), "checkpoint": None, "connected": 0, "current": None, "message": ""}
        self.rounds: dict[int, dict] = {}
        self.clients: dict[str, dict] = {}
        self.notices: deque[dict] = deque(maxlen=NOTICES)
        self.matrix: dict | None = None  # a cross-site evaluation's models by sites

    # ------------------------------------------------------------------ reading (web thread)

    def listen(self, notify: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(notify)
        return lambda: self._unlisten(notify)

    def snapshot(self) -> tuple[int, str]:
        with self._lock:
            state = {"run": self.run, "rounds": [self.rounds[k] for k in sorted(self.rounds)],
                     "clients": [self.clients[k] for k in sorted(self.clients)], "notices": list(self.notices), "matrix": self.matrix,
                     "server_time": time.time()}  # the page's clock may differ: live durations use the offset
            return self._seq, json.dumps(state, allow_nan=False)

    def since(self, last: int) -> list[Delta] | None:
        """Deltas after id `last`; None when some of them are no longer kept (send a snapshot)."""
        with self._lock:
            if last > self._seq:
                return None  # an id from another server process: start over
            if last == self._seq:
                return []
            if not self._journal or self._journal[0][0] > last + 1:
                return None
            return [d for d in self._journal if d[0] > last]

    @property
    def seq(self) -> int:
        return self._seq

    # ------------------------------------------------------------------ folding events (coordinator loop)

    def __call__(self, event: ev.Event) -> None:
        handler = getattr(self, f"_{type(event).__name__}", None)
        if handler is None:
            return
        with self._lock:
            handler(event)
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def _emit(self, kind: str, payload: dict) -> None:
        self._seq += 1
        self._journal.append((self._seq, kind, json.dumps(payload, allow_nan=False)))

    def _run_changed(self, **changes: object) -> None:
        self.run.update(changes)
        self._emit("run", self.run)

    def _client(self, name: str, **changes: object) -> None:
        row = self.clients.setdefault(name, {"name": name, "connected": False, "status": "", "hostname": "", "device": "",
                                             "partition": None, "selected": None, "round": None, "result": "", "reason": "",
                                             "examples": None, "bytes": None, "train_loss": None, "train_seconds": None, "ts": None})
        row.update(changes)
        self._emit("client", row)

    def _notice(self, e: ev.Event, level: str, text: str) -> None:
        notice = {"ts": e.ts, "level": level, "text": text[:TEXT]}
        self.notices.append(notice)
        self._emit("notice", notice)

    def _RunStarted(self, e: ev.RunStarted) -> None:
        self._run_changed(status="waiting", run_id=e.run_id, rounds=e.rounds, completed=e.completed, resumed=e.resumed,
                          strategy=e.strategy, address=e.address, started=e.ts)

    def _WaitingForClients(self, e: ev.WaitingForClients) -> None:
        self._run_changed(status="waiting", message=f"waiting for clients: {e.connected}/{e.needed} connected")

    def _ClientJoined(self, e: ev.ClientJoined) -> None:
        self._client(e.client, connected=True, status="connected", hostname=e.hostname[:64], device=e.device[:64],
                     partition=e.partition, ts=e.ts)
        self._run_changed(connected=e.connected)

    def _ClientLeft(self, e: ev.ClientLeft) -> None:
        current = self.run.get("current") or {}
        said = {"result": "dropped", "reason": f"left during round {current.get('round')}"} if e.awaited else {}
        if e.reason:  # what the client said as it left (the page shows it as text)
            said["reason"] = e.reason[:300]
        self._client(e.client, connected=False, status="dropped" if e.awaited else "disconnected", ts=e.ts, **said)
        self._run_changed(connected=e.connected)

    def _PartitionsFixed(self, e: ev.PartitionsFixed) -> None:
        for name, index in e.assigned.items():
            if name in self.clients:
                self._client(name, partition=index)

    def _RoundOpened(self, e: ev.RoundOpened) -> None:
        for name in e.selected:
            self._client(name, selected=e.round, status="training", result="", reason="", ts=e.ts)
        self._run_changed(status="running", message="", current={"round": e.round, "attempt": e.attempt, "selected": len(e.selected),
                                                                  "target": e.target, "deadline": e.deadline, "opened": e.ts})

    def _ClientsAdded(self, e: ev.ClientsAdded) -> None:
        for name in e.clients:
            self._client(name, selected=e.round, status="training", result="", reason="", ts=e.ts)

    def _UpdateAccepted(self, e: ev.UpdateAccepted) -> None:
        self._client(e.client, status="answered", round=e.round, result="accepted", reason="", examples=e.examples, bytes=e.bytes,
                     train_loss=_num(e.train_loss), train_seconds=_num(e.train_seconds), ts=e.ts)

    def _UpdateRefused(self, e: ev.UpdateRefused) -> None:
        if e.client in self.clients or len(self.clients) < 10_000:  # refusals can come from names that never joined
            self._client(e.client[:128], status="refused", round=e.round, result="refused", reason=f"{e.reason}: {e.message}"[:TEXT], ts=e.ts)

    def _RoundClosed(self, e: ev.RoundClosed) -> None:
        record = _clean(e.record.to_json())
        record["ts"] = e.ts
        self.rounds[record["round"]] = record
        self._emit("round", record)
        self._run_changed(completed=record["round"], current=None)

    def _EvaluationDone(self, e: ev.EvaluationDone) -> None:
        if e.round == 0:
            record = _clean(ev.initial_record(e, int(self.run.get("rounds") or 0)).to_json())
            record["ts"] = e.ts
            self.rounds[0] = record
            self._emit("round", record)

    def _RoundFailed(self, e: ev.RoundFailed) -> None:
        self._notice(e, "warning", e.message)

    def _Diverging(self, e: ev.Diverging) -> None:
        self._notice(e, "warning", e.message)

    def _CheckpointWritten(self, e: ev.CheckpointWritten) -> None:
        self._run_changed(checkpoint={"round": e.round, "path": e.path, "bytes": e.bytes})

    def _CrossEvaluation(self, e: ev.CrossEvaluation) -> None:
        self.matrix = {"job": e.job_id, "models": [m[:TEXT] for m in e.models], "sites": [s[:TEXT] for s in e.sites],
                       "accuracy": e.accuracy}
        self._emit("matrix", self.matrix)

    def _RunFinished(self, e: ev.RunFinished) -> None:
        self._run_changed(status=e.outcome, message=e.message[:TEXT], completed=e.completed, final_model=e.final_model or None,
                          current=None, finished=e.ts)

    def _unlisten(self, notify: Callable[[], None]) -> None:
        with self._lock:
            if notify in self._listeners:
                self._listeners.remove(notify)


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _clean(record: dict) -> dict:
    """JSON without NaN or infinities (the browser's JSON.parse refuses them)."""
    return {k: (_num(v) if isinstance(v, float) else v) for k, v in record.items()}

