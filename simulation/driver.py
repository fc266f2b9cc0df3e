"""Virtual clients plugged into the real coordinator: they join its registry, take the tasks its run loop sends, and
hand their updates to its intake, encoded with the round's codec, exactly as an upload would arrive. Only the gRPC
hop is missing: selection, rounds, validation, aggregation, privacy wrappers, events, the round log and checkpoints
are the coordinator's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator

import torch

from fedtl.client.error_feedback import ErrorFeedback
from fedtl.client.local_round import round_seed
from fedtl.common import codecs
from fedtl.common.codecs import UpdateSource
from fedtl.common.codecs.delta import DELTA_SEGMENT
from fedtl.common.config import Hello, TrainTask, UpdateHeader
from fedtl.common.errors import FedError
from fedtl.common.shards import ShardTable
from fedtl.common.tensorcodec import sha256_hex
from fedtl.server.coordinator import Coordinator
from fedtl.server.events import ClientsAdded, Event, RoundOpened, RunFinished
from fedtl.simulation.work import ClientJob, ClientResult

logger = logging.getLogger(__name__)


class VirtualClients:
    def __init__(self, coordinator: Coordinator, backend, shards: ShardTable, count: int, prefix: str = "sim") -> None:  # type: ignore[no-untyped-def]
        self.c = coordinator
        self.backend = backend
        self.shards = shards
        self.names = [f"{prefix}{i:05d}" for i in range(count)]
        self.personal: dict[str, torch.nn.Module] = {}
        self.feedback: dict[str, ErrorFeedback] = {}  # biased codecs' residuals, per client (in memory)
        self.held: dict[str, dict[str, str]] = {}  # segment -> the version each client holds (it would not download it again)
        self.refused = 0
        self._trainer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-sim")
        self._work: set[asyncio.Task] = set()

    def join(self) -> None:
        """Every virtual client connects at once (no join grace needed); the coordinator assigns their shards."""
        now = self.c.clock.monotonic()
        for name in self.names:
            self.c.registry.connect(Hello(name, hostname="simulation", device="virtual", torch_version=torch.__version__), now)
        self.c.bus.subscribe(self._on_event, critical=True)
        self.c.wakeup.notify()
        logger.info("%d virtual clients joined (%s … %s), training on the %s backend", len(self.names), self.names[0], self.names[-1],
                    self.backend.name)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RoundOpened):
            self._start(list(event.selected))
        elif isinstance(event, ClientsAdded):
            self._start(list(event.clients))
        elif isinstance(event, RunFinished):
            self._trainer.shutdown(wait=False)

    def _start(self, names: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(names))
        self._work.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        """A virtual client's failure is the simulation's: stop the run (as a stopped, resumable one) and say why."""
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("virtual clients failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self.c.request_stop(f"the virtual clients failed ({type(exc).__name__}: {exc})")

    async def _serve(self, names: list[str]) -> None:
        tasks = {name: task for name in names if (task := self._task_of(name)) is not None}
        if not tasks:
            return
        first = next(iter(tasks.values()))
        model = self.c.model
        state = {n: model.state[n].detach().clone() for n in model.trainable}  # what every client received this round
        for name, task in tasks.items():
            self._download(name, task)
        jobs = [self._job(name, task) for name, task in tasks.items()]
        loop = asyncio.get_running_loop()
        batches = self.backend.train(state, jobs, first.config, self.personal)
        uploads: list[asyncio.Task] = []
        while True:
            batch = await loop.run_in_executor(self._trainer, next, batches, None)
            if batch is None:
                break
            for result in batch:
                if result.personal is not None:
                    self.personal[result.name] = result.personal
                uploads.append(loop.create_task(self._upload(tasks[result.name], result)))
            await asyncio.sleep(0)  # let the intake take this batch while the next one trains
        await asyncio.gather(*uploads)

    def _task_of(self, name: str) -> TrainTask | None:
        session = self.c.registry.by_name(name)
        found = None
        while session is not None and not session.outbox.empty():
            item = session.outbox.get_nowait()
            if isinstance(item, TrainTask):
                found = item
        return found

    def _download(self, name: str, task: TrainTask) -> None:
        """Count what a real client would download: the versions it does not hold (just the delta when it holds its base)."""
        held = self.held.setdefault(name, {})
        delta = next((r for r in task.segments if r.name == DELTA_SEGMENT), None)
        for ref in task.segments:
            if ref.name == DELTA_SEGMENT or held.get(ref.name) == ref.sha256:
                continue
            moved = delta if ref.name == "trainable" and delta is not None and delta.base == held.get("trainable") else ref
            self.c.downloaded(moved.total_bytes)
            held[ref.name] = ref.sha256

    def _job(self, name: str, task: TrainTask) -> ClientJob:
        assignment = task.data
        identity = str(assignment.partition_index) if assignment.scheme != "none" else name
        train, holdout = self.shards.of(assignment)
        return ClientJob(name, train, holdout, round_seed(task.config.seed, task.round, identity), task.evaluate, self.c.run_id)

    async def _upload(self, task: TrainTask, result: ClientResult) -> None:
        session = self.c.registry.by_name(result.name)
        if session is None:
            return
        codec = codecs.get(task.update_encoding)
        exact = frozenset(n for n, t in result.update.items() if t.is_floating_point() and n not in self.c.model.parameters)
        source = UpdateSource.of(result.update, exact)
        feedback = self.feedback.setdefault(result.name, ErrorFeedback(None)) if codec.error_feedback else None
        blob = feedback.encode(codec, source, self.c.run_id) if feedback is not None else codec.encode(source)
        header = UpdateHeader(session.session_id, task.round, task.base_digest, result.num_examples, task.config.update_kind, len(blob),
                              sha256_hex(blob), result.metrics, task.update_encoding)
        try:
            await self.c.receive_update(header, _one_chunk(bytes(blob)))
        except FedError as exc:  # refused (the round closed, the rule said no): counted in the round record like any refusal
            self.refused += 1
            logger.debug("virtual client %s: update refused: %s", result.name, exc)
            return
        if feedback is not None:
            feedback.accepted()

    def close(self) -> None:
        self._trainer.shutdown(wait=False)
        self.backend.close()


async def _one_chunk(blob: bytes) -> AsyncIterator[bytes]:
    yield blob

