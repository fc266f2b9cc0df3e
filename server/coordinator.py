"""The round state machine: wait for clients, select, hand out tasks, fold updates, aggregate, evaluate, checkpoint.

Concurrency: all state here lives on the asyncio event loop and is touched only from it, so it
needs no lock. CPU work leaves the loop: decoding and checks go to a small pool, folds into
the accumulator to a single worker thread. Folds and the round's final `mean()` queue on that
one FIFO thread, so an update accepted before the round closed is always in the aggregate and
none is ever half-counted. Staged uploads are bounded by a semaphore, so memory is
(accumulator + a few updates) x model size, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator

from common import checkpoint
from common.config import (
    PARTITION_NONE,
    PROTOCOL,
    DataAssignment,
    Finished,
    Hello,
    ModelRecipe,
    TrainTask,
    UpdateHeader,
    Welcome,
)
from common.errors import FederationRefused
from server import store
from server.aggregation import Accumulator, ServerOptimizer
from server.config import ServerConfig
from server.evaluation import ServerEvaluator
from server.model_state import GlobalModel, PreparedSegment
from server.registry import Registry, Session
from server.round_log import RoundLog, RoundRecord
from server.intake import UpdateIntake
from server.rounds import Round, reason_of
from server.selection import round_size, select_clients, with_over_selection

logger = logging.getLogger(__name__)

__all__ = ["Coordinator", "SegmentGone", "reason_of"]


class SegmentGone(LookupError):
    """A download asked for a model version the server no longer serves."""


class Coordinator:
    def __init__(self, cfg: ServerConfig, model: GlobalModel, evaluator: ServerEvaluator | None, recipe: ModelRecipe, output: Path) -> None:
        self.cfg = cfg
        self.model = model
        self.evaluator = evaluator
        self.recipe = recipe
        self.output = output
        self.registry = Registry()
        self.rng = random.Random(cfg.seed)
        self.optimizer = ServerOptimizer(cfg.server_optimizer, cfg.server_lr, cfg.server_momentum)
        self.round_log = RoundLog(cfg.run_dir / "rounds.jsonl")
        self.run_id = uuid.uuid4().hex[:12]
        self.completed = 0
        self.elapsed_before = 0.0  # time-to-accuracy clock carried over a resume
        self.final: Finished | None = None
        self.listen_address = cfg.address  # the bound address, once the transport knows the port
        self._round: Round | None = None
        self._segments: dict[str, PreparedSegment] = {}
        self._trainable: PreparedSegment | None = None
        self._static: PreparedSegment | None = None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._failure = ""  # why the run is stopping with an error, for Finished and the log
        self._bytes_down = 0
        self._saved_rng = self.rng.getstate()
        self._clock_start: float | None = None
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedtl-cpu")
        self._fold = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-fold")
        self._writer = store.BackgroundWriter()  # checkpoint writes, in order, off the event loop
        self.intake = UpdateIntake(self._cpu, self._fold, cfg.max_concurrent_uploads, cfg.max_update_norm)
        # Each download stream holds a chunk or two in gRPC's send path; a few streams already use every
        # core, so more at once only costs memory (bench/scale.py).
        self.sending = asyncio.Semaphore(cfg.max_concurrent_downloads)

    # ================================================================ resume

    def fingerprint(self) -> dict[str, object]:
        """What must match for a checkpoint to belong to this run."""
        c = self.cfg
        return {
            "model": c.model, "num_classes": self.recipe.num_classes, "train_policy": c.train_policy, "fedbn": c.fedbn,
            "algorithm": c.train.algorithm, "server_optimizer": c.server_optimizer, "seed": c.seed,
        }

    def resume(self) -> bool:
        loaded = store.load(self.cfg.run_dir, self.fingerprint())
        if loaded is None:
            return False
        state, model, optimizer = loaded
        self.model.load(model)
        self.optimizer.state = {k: v.clone() for k, v in optimizer.items()}
        self.rng.setstate(state.rng_state)
        self._saved_rng = self.rng.getstate()
        self.registry.partitions = dict(state.partitions)
        self.registry.partition_count = state.partition_count
        self.completed = state.round
        self.run_id = state.run_id
        self.elapsed_before = state.elapsed
        dropped = self.round_log.truncate_after(state.round)
        logger.info("resuming run %s after round %d/%d from %s%s", self.run_id, state.round, self.cfg.rounds,
                    self.cfg.run_dir / store.CHECKPOINT, f" (dropped {dropped} round-log lines past it)" if dropped else "")
        return True

    def _snapshot(self) -> list[tuple[Path, bytearray]]:
        """Copy what the checkpoint (and the round's model, if kept) must hold: one memcpy, no disk yet."""
        state = store.RunState(
            run_id=self.run_id, round=self.completed, rng_state=list(self._saved_rng),
            partitions=dict(self.registry.partitions), partition_count=self.registry.partition_count,
            fingerprint=self.fingerprint(), elapsed=self._elapsed(),
        )
        files = [(self.cfg.run_dir / store.CHECKPOINT, store.snapshot(state, self.model.full_state(), self.optimizer.state))]
        if self.cfg.keep_round_models:
            files.append((self.cfg.run_dir / "models" / f"round-{self.completed:04d}.safetensors", self._model_blob()))
        return files

    async def _checkpoint_in_background(self) -> None:
        """Snapshot now; write and fsync on the I/O thread while the next round runs.

        The round record is already in rounds.jsonl; if the process dies before the write lands,
        the previous checkpoint stays and resuming drops the record past it, so both agree."""
        self._writer.submit(await asyncio.get_running_loop().run_in_executor(self._cpu, self._snapshot))

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._clock_start if self._clock_start is not None else 0.0)

    # ================================================================ servicer-facing (event loop only)

    def connect(self, hello: Hello) -> Session:
        if hello.protocol != PROTOCOL:
            raise FederationRefused(f"client speaks protocol {hello.protocol!r}, this server {PROTOCOL!r}: run the same release on both")
        session, old = self.registry.connect(hello)
        try:
            assignment = self._assignment(session.name)
        except FederationRefused:
            self.registry.disconnect(session)
            raise
        session.outbox.put_nowait(Welcome(session.session_id, self.run_id, self.recipe, assignment))
        where = f" partition {assignment.partition_index}/{assignment.partition_count}" if assignment and assignment.scheme != "none" else ""
        logger.info("client %s connected (%s, %s)%s%s; %d connected", session.name, hello.hostname or "?", hello.device or "?",
                    where, " replacing its previous session" if old else "", len(self.registry))
        if self.final is not None:
            session.outbox.put_nowait(self.final)
        else:
            rnd = self._round
            if rnd and rnd.pending(session.name):
                rnd.gone.discard(session.name)
                session.outbox.put_nowait(rnd.task(session.name))  # a restarted client picks its task up again
        self._notify()
        return session

    def disconnect(self, session: Session) -> None:
        if not self.registry.disconnect(session):
            return
        logger.info("client %s disconnected; %d connected", session.name, len(self.registry))
        rnd = self._round
        if rnd and rnd.pending(session.name):
            rnd.gone.add(session.name)
            rnd.close_if_due()
        self._notify()

    def segment(self, session_id: str, digest: str) -> PreparedSegment:
        self.registry.session(session_id)
        try:
            return self._segments[digest]
        except KeyError:
            raise SegmentGone(f"model version {digest[:16]}… is not served any more (the round moved on); wait for the next task") from None

    def session_name(self, session_id: str) -> str:
        return self.registry.session(session_id).name

    def downloaded(self, nbytes: int) -> None:
        self._bytes_down += nbytes

    def rejected_upload(self, reason: str, name: str, message: str) -> None:
        self.intake.refuse(reason, name, message)

    async def receive_update(self, header: UpdateHeader, data: AsyncIterator[bytes]) -> str:
        """Stream one update in, check it completely, and fold it into the round's aggregate."""
        name = self.registry.session(header.session_id).name
        try:
            return await self.intake.receive(self._round, lambda: self._round, name, header, data)
        finally:
            self._notify()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            logger.warning("stopping: %s", reason)
            self._stop_reason = reason
            self._stop.set()
            self._notify()

    # ================================================================ the run

    async def run(self) -> int:
        """Drive the whole run; return the process exit code."""
        loop = asyncio.get_running_loop()
        self._static = await loop.run_in_executor(self._cpu, self.model.prepare_static)
        self._publish(await loop.run_in_executor(self._cpu, self.model.prepare_trainable))
        if self.completed == 0:
            # A fresh run is durable before round 1: a crash at any later point resumes, never restarts.
            self.round_log.start_fresh()
            await loop.run_in_executor(self._cpu, lambda: store.write_all(self._snapshot()))
        if self.completed == 0 and self.cfg.eval_every and self.evaluator is not None:
            await self._initial_evaluation()
        while self.completed < self.cfg.rounds and not self._stop.is_set():
            if not await self._run_round(self.completed + 1):
                if self._stop.is_set():
                    break
                await self._writer.flush()
                return await self._finish(self._failure, failed=True)
        await self._writer.flush()
        if self._stop.is_set():  # the last completed round's checkpoint is on disk (round 0's at least)
            return await self._finish(f"server stopped ({self._stop_reason}) after round {self.completed}; restart it to resume", failed=False)
        await loop.run_in_executor(self._cpu, self._save_final)
        return await self._finish(f"run complete after {self.completed} rounds; final model in {self.output}", failed=False)

    async def _run_round(self, number: int) -> bool:
        loop = asyncio.get_running_loop()
        for attempt in range(1, self.cfg.round_retries + 2):
            if not await self._wait_for_clients():
                return False
            rnd = self._start_round(number, attempt)
            waiter = asyncio.ensure_future(rnd.done.wait())
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, timeout=self.cfg.round_timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if not rnd.closed:
                rnd.close("stopping" if self._stop.is_set() else f"deadline ({self.cfg.round_timeout:g}s)")
            await loop.run_in_executor(self._fold, lambda: None)  # every accepted fold has landed
            if self._stop.is_set():
                logger.warning("round %d abandoned: %s", number, self._stop_reason)
                self._round = None
                return False
            if rnd.can_aggregate:
                await self._complete_round(rnd)
                return True
            needed = min(rnd.min_fit, rnd.target)
            missing = sorted(set(rnd.selected) - set(rnd.answered))
            self._failure = (
                f"round {number} got {len(rnd.answered)} of {len(rnd.selected)} updates ({rnd.close_reason}), "
                f"needs {needed} (--min-fit-clients); no answer from {', '.join(missing[:8])}"
            )
            logger.warning("%s; attempt %d of %d", self._failure, attempt, self.cfg.round_retries + 1)
            self._round = None
        self._failure = f"{self._failure}. Gave up after {self.cfg.round_retries + 1} attempts: check the clients' logs, or raise --round-timeout"
        return False

    async def _wait_for_clients(self) -> bool:
        needed = max(self.cfg.min_clients, self.cfg.min_fit_clients)
        started = time.monotonic()
        last_note = 0.0
        while len(self.registry) < needed and not self._stop.is_set():
            now = time.monotonic()
            if self.cfg.wait_timeout and now - started > self.cfg.wait_timeout:
                self._failure = f"only {len(self.registry)} of the {needed} clients needed connected within {self.cfg.wait_timeout:g}s (--wait-timeout)"
                return False
            if now - last_note >= 10:
                logger.info("waiting for clients: %d/%d connected (listening on %s)", len(self.registry), needed, self.listen_address)
                last_note = now
            await self._wait_change(5.0)
        if self._stop.is_set():
            return False
        if self.registry.partition_count is None:
            await self._fix_partitions()
        return True

    async def _fix_partitions(self) -> None:
        """Before round 1, let clients that start together all join, then freeze the shard count."""
        while not self._stop.is_set():
            quiet = time.monotonic() - self.registry.last_join
            if quiet >= self.cfg.join_grace:
                break
            await self._wait_change(self.cfg.join_grace - quiet)
        auto = [n for n in self.registry.connected() if self.registry.wants_server_partition(n)]
        count = self.cfg.num_partitions or max(1, len(auto))
        self.registry.fix_partitions(count)
        if auto:
            logger.info("training split divided into %d %s partitions: %s", count, self.cfg.partition_scheme,
                        ", ".join(f"{n}={self.registry.partitions.get(n)}" for n in auto))

    def _start_round(self, number: int, attempt: int) -> Round:
        connected = self.registry.connected()
        target = round_size(self.cfg.clients_per_round, self.cfg.fraction, len(connected), self.cfg.min_fit_clients)
        selected = select_clients(connected, with_over_selection(target, self.cfg.over_select, len(connected)), self.rng)
        trainable = self._trainable
        assert trainable is not None
        segments = tuple(s.ref for s in (self._static, trainable) if s is not None)
        evaluate = bool(self.cfg.client_eval_every) and number % self.cfg.client_eval_every == 0
        expect = self.model.expectation(number, trainable.manifest.sha256, self.cfg.train.update_kind, self.cfg.max_examples)

        def task(name: str) -> TrainTask:
            return TrainTask(number, segments, trainable.manifest.sha256, self.cfg.train, self._assignment(name) or DataAssignment(scheme="none"),
                             evaluate, self.cfg.round_timeout)

        rnd = Round(number, attempt, selected, min(target, len(selected)), self.cfg.min_fit_clients, expect, task,
                    Accumulator(self.model.tensors(self.model.trainable)), time.monotonic())
        self._round = rnd
        if self._clock_start is None:
            self._clock_start = rnd.started
        for name in selected:
            session = self.registry.by_name(name)
            if session is not None:
                session.outbox.put_nowait(task(name))
        logger.info("round %d/%d%s: selected %d of %d connected (%s), closes at %d updates", number, self.cfg.rounds,
                    f" attempt {attempt}" if attempt > 1 else "", len(selected), len(connected), ", ".join(selected[:8]), rnd.target)
        return rnd

    def _assignment(self, name: str) -> DataAssignment | None:
        session = self.registry.by_name(name)
        if session is not None and session.hello.partition_index == PARTITION_NONE:
            return DataAssignment(scheme="none", seed=self.cfg.seed, holdout_fraction=self.cfg.holdout_fraction)
        index = self.registry.partition_of(name)
        if index is None:
            return None
        count = session.hello.partition_count if session is not None and session.hello.partition_index >= 0 else self.registry.partition_count
        c = self.cfg
        return DataAssignment(index, count or 1, c.partition_scheme, c.alpha, c.classes_per_client, c.seed, c.holdout_fraction, c.train_per_class)

    async def _complete_round(self, rnd: Round) -> None:
        loop = asyncio.get_running_loop()
        phases = {"train_and_collect": (rnd.closed_at or time.monotonic()) - rnd.started}
        mark = time.monotonic()
        mean = await loop.run_in_executor(self._fold, rnd.accumulator.mean)
        await loop.run_in_executor(self._fold, self.optimizer.step, self.model.state, mean, set(self.model.parameters), rnd.expectation.kind)
        phases["aggregate"], mark = time.monotonic() - mark, time.monotonic()
        self._publish(await loop.run_in_executor(self._cpu, self.model.prepare_trainable))
        phases["serialize"], mark = time.monotonic() - mark, time.monotonic()
        record = rnd.record(self.cfg.rounds, self._bytes_down)
        self._bytes_down = 0
        if self.evaluator is not None and self.cfg.eval_every and (rnd.number % self.cfg.eval_every == 0 or rnd.number == self.cfg.rounds):
            ev = await loop.run_in_executor(self._cpu, self.evaluator.run)
            record.test_loss, record.test_accuracy = ev.result.loss, ev.result.accuracy
            record.eval_seconds, record.feature_cache = ev.seconds, ev.cache
        phases["evaluate"], mark = time.monotonic() - mark, time.monotonic()
        self.completed = rnd.number
        self._round = None
        self._saved_rng = self.rng.getstate()
        record.seconds = time.monotonic() - rnd.started
        record.elapsed = self._elapsed()
        record.rejected = self.intake.take_refusals()  # everything refused since the previous record
        await self._writer.flush()  # the previous round's checkpoint has landed
        phases["previous_write"], mark = time.monotonic() - mark, time.monotonic()
        record.phases = {k: round(v, 4) for k, v in phases.items()}
        self.round_log.append(record)
        await self._checkpoint_in_background()

    def _publish(self, trainable: PreparedSegment) -> None:
        """Serve the new trainable version (and the static one); stop serving the previous version."""
        self._segments = {s.manifest.sha256: s for s in (self._static, trainable) if s is not None}
        self._trainable = trainable

    async def _initial_evaluation(self) -> None:
        assert self.evaluator is not None
        ev = await asyncio.get_running_loop().run_in_executor(self._cpu, self.evaluator.run)
        record = RoundRecord(round=0, rounds=self.cfg.rounds, test_loss=ev.result.loss, test_accuracy=ev.result.accuracy,
                             eval_seconds=ev.seconds, feature_cache=ev.cache)
        self.round_log.append(record)

    def _model_blob(self) -> bytearray:
        return store.model_blob(self.recipe, self.model.full_state(), self.completed, self.run_id)

    def _save_model(self, path: Path) -> int:
        blob = self._model_blob()
        checkpoint.write_bytes_atomic(path, blob)
        return len(blob)

    def _save_final(self) -> None:
        size = self._save_model(self.output)
        logger.info("final model saved: %s (%.1f MB)", self.output, size / 1e6)

    async def _finish(self, reason: str, failed: bool) -> int:
        """Tell every client the run is over and give them a moment to hang up."""
        late = self.intake.take_refusals()
        if late:
            logger.warning("refused after the last round record: %s", ", ".join(f"{k}={v}" for k, v in sorted(late.items())))
        (logger.error if failed else logger.info)("%s", reason)
        self.final = Finished(reason, failed)
        for name in self.registry.connected():
            session = self.registry.by_name(name)
            if session is not None:
                session.outbox.put_nowait(self.final)
        deadline = time.monotonic() + self.cfg.finish_grace
        while len(self.registry) and time.monotonic() < deadline:
            await self._wait_change(deadline - time.monotonic())
        self._cpu.shutdown(wait=False)
        self._fold.shutdown(wait=False)
        self._writer.shutdown()
        return 2 if failed else 0

    # ================================================================ wake-ups

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            pass
