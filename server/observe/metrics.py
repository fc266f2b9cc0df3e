"""Prometheus metrics from the round events (prometheus-client: its exposition format and naming checks).

Counters count from the completed rounds' records, so they equal the sums over rounds.jsonl for the
rounds this process ran (Prometheus counters restart with the process; `rate()` handles that). Labels
come from closed sets only (phase names and refusal reasons the code defines, capped), never from what a
client sends: a hostile client cannot grow the series count.
"""

from __future__ import annotations

import math
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fedtl.server import events as ev

ROUND_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LABEL = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_LABEL_VALUES = 32  # per label; further values are counted as "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_completed = Counter("fl_rounds_completed", "Rounds completed (aggregated and checkpointed)", registry=r)
        self.rounds_failed = Counter("fl_rounds_failed", "Round attempts that closed without enough answers", registry=r)
        self.round_duration = Histogram("fl_round_duration_seconds", "Round duration, selection to checkpoint", buckets=ROUND_BUCKETS,
                                        registry=r)
        self.phase_duration = Histogram("fl_round_phase_duration_seconds", "Time spent in each phase of a round", ["phase"],
                                        buckets=ROUND_BUCKETS, registry=r)
        self.connected = Gauge("fl_clients_connected", "Clients connected now", registry=r)
        self.updates = Counter("fl_client_updates", "Client updates of completed rounds, by result", ["result"], registry=r)
        self.refusals = Counter("fl_client_update_refusals", "Refused client updates of completed rounds, by reason", ["reason"],
                                registry=r)
        self.examples = Counter("fl_examples_trained", "Training examples the accepted updates report", registry=r)
        self.received = Counter("fl_received_bytes", "Update bytes received from clients", registry=r)
        self.sent = Counter("fl_sent_bytes", "Model bytes sent to clients", registry=r)
        self.round = Gauge("fl_round", "Last completed round", registry=r)
        self.rounds_planned = Gauge("fl_rounds_planned", "Rounds the run is configured for", registry=r)
        self.accuracy = Gauge("fl_global_test_accuracy", "Global model's accuracy on the server's test split (ratio)", registry=r)
        self.loss = Gauge("fl_global_test_loss", "Global model's loss on the server's test split", registry=r)
        self.client_accuracy = Gauge("fl_client_eval_accuracy", "Federated evaluation: clients' held-out accuracy (ratio)", registry=r)
        self.train_loss = Gauge("fl_train_loss", "Example-weighted training loss the clients report", registry=r)
        self.epsilon: Gauge | None = None  # absent until some ε is reported: a 0 would read as perfect privacy on a run with none
        self.up = Gauge("fl_run_up", "1 while the run goes on, 0 once it has ended", registry=r)
        self._seen: dict[str, set[str]] = {"phase": set(), "reason": set()}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RoundClosed):
            self._round(event)
        elif isinstance(event, ev.EvaluationDone) and event.round == 0:
            self._set(self.accuracy, event.accuracy)
            self._set(self.loss, event.loss)
        elif isinstance(event, (ev.ClientJoined, ev.ClientLeft)):
            self.connected.set(event.connected)
        elif isinstance(event, ev.RoundFailed):
            self.rounds_failed.inc()
        elif isinstance(event, ev.RunStarted):
            self.rounds_planned.set(event.rounds)
            self.round.set(event.completed)
            self.up.set(1)
        elif isinstance(event, ev.RunFinished):
            self.up.set(0)

    def _round(self, e: ev.RoundClosed) -> None:
        r = e.record
        self.rounds_completed.inc()
        self.round.set(r.round)
        self.round_duration.observe(r.seconds)
        for phase, seconds in r.phases.items():
            self.phase_duration.labels(self._label("phase", phase)).observe(max(0.0, seconds))
        self.updates.labels("accepted").inc(r.answered)
        for reason, count in r.rejected.items():
            self.updates.labels("refused").inc(count)
            self.refusals.labels(self._label("reason", reason)).inc(count)
        self.examples.inc(r.examples)
        self.received.inc(r.bytes_up)
        self.sent.inc(r.bytes_down)
        for gauge, value in ((self.accuracy, r.test_accuracy), (self.loss, r.test_loss), (self.client_accuracy, r.client_eval_accuracy),
                             (self.train_loss, r.train_loss)):
            self._set(gauge, value)
        epsilon = r.epsilon if not math.isnan(r.epsilon) else r.record_epsilon
        if epsilon is not None and math.isfinite(epsilon):
            if self.epsilon is None:
                self.epsilon = Gauge("fl_privacy_epsilon", "Privacy loss spent so far (client-level ε, else the largest record-level ε)",
                                     registry=self.registry)
            self.epsilon.set(epsilon)

    def _label(self, name: str, value: str) -> str:
        seen = self._seen[name]
        if value in seen:
            return value
        if LABEL.match(value) and len(seen) < MAX_LABEL_VALUES:
            seen.add(value)
            return value
        return "other"

    @staticmethod
    def _set(gauge: Gauge, value: float) -> None:
        if value is not None and math.isfinite(value):
            gauge.set(value)
