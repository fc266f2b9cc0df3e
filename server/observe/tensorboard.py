"""Per-round scalars for TensorBoard (tensorboardX: writes event files with no TensorFlow, and pins
nothing that fights our grpcio/protobuf). An optional extra: `pip install fedtl[tensorboard]`.

Written on a thread of its own and flushed every round, so a slow disk never holds up the coordinator and
a `tensorboard --logdir DIR` sees each round as soon as it closes. (tensorboardX's SummaryWriter queues
through a process queue and its flush() does not wait for it; its EventsWriter writes in the calling thread.)
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedtl.common.errors import ConfigError
from fedtl.server import events as ev
from fedtl.server.records import RoundRecord


def scalars(record: RoundRecord) -> dict[str, float]:
    """The tags written for one round (nothing for a figure the round did not measure)."""
    values = {
        "test/accuracy": record.test_accuracy, "test/loss": record.test_loss, "train/loss": record.train_loss,
        "train/accuracy": record.train_accuracy, "federated_eval/accuracy": record.client_eval_accuracy,
        "privacy/epsilon": record.epsilon, "privacy/record_epsilon": record.record_epsilon,
    }
    if record.round > 0:
        values.update({"bytes/up": float(record.bytes_up), "bytes/down": float(record.bytes_down), "round/seconds": record.seconds,
                       "round/clients": float(record.answered), "round/examples": float(record.examples)})
    return {tag: float(v) for tag, v in values.items() if v is not None and math.isfinite(v)}


class TensorBoardSink:
    def __init__(self, logdir: Path) -> None:
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto import event_pb2, summary_pb2
        except ImportError:
            raise ConfigError("--tensorboard needs tensorboardX: pip install 'fedtl[tensorboard]' (or tensorboardX)") from None
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--tensorboard {logdir}: cannot create it ({exc.strerror})") from None
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventsWriter(str(logdir / "events"))
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-tensorboard")
        self.rounds = 0

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.rounds = event.rounds
        elif isinstance(event, ev.RoundClosed):
            self._io.submit(self._write, event.record, event.ts)
        elif isinstance(event, ev.EvaluationDone) and event.round == 0:
            self._io.submit(self._write, ev.initial_record(event, self.rounds), event.ts)

    def _write(self, record: RoundRecord, ts: float) -> None:
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars(record).items()]
        self.writer.write_event(self._event(wall_time=ts, step=record.round, summary=self._summary(value=values)))
        self.writer.flush()

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self.writer.close()
