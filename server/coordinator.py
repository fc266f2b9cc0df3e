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
import collections
import logging
import math
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

import torch

from common import checkpoint, tensorcodec
from common.chunks import BlobAssembler, Manifest
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
from common.errors import FederationRefused, NotSelected, UpdateRejected, WireFormatError
from server import store
from server.aggregation import Accumulator, ServerOptimizer
from server.config import ServerConfig
from server.evaluation import ServerEvaluator
from server.model_state import GlobalModel, PreparedSegment
from server.registry import Registry, Session
from server.round_log import RoundLog, RoundRecord
from server.selection import round_size, select_clients, with_over_selection
from server.validation import Expectation, check_header, check_tensors, clip_to_norm

logger = logging.getLogger(__name__)
T = TypeVar("T")


_WIRE_REASONS = {"TruncatedError": "truncated", "DigestMismatch": "digest_mismatch", "OversizeError": "oversize", "CorruptError": "corrupt"}


def reason_of(exc: Exception) -> str:
    """Stable short key for the round log's count of refused requests."""
    return getattr(exc, "reason", None) or _WIRE_REASONS.get(type(exc).__name__, type(exc).__name__)


class SegmentGone(LookupError):
    """A download asked for a model version the server no longer serves."""


@dataclass
class Round:
    number: int
    attempt: int
    selected: list[str]
    target: int
    expectation: Expectation
    task: Callable[[str], TrainTask]
    accumulator: Accumulator
    started: float
    answered: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    clipped: int = 0
    bytes_up: int = 0
    closed: bool = False
    closed_at: float = 0.0
    close_reason: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._rejected: collections.Counter[str] = collections.Counter()
        self._bytes_down = 0
        self._saved_rng = self.rng.getstate()
        self._clock_start: float | None = None
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedtl-cpu")
        self._fold = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-fold")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-io")  # checkpoint writes, in order
        self._pending_write: asyncio.Future | None = None
        self._staging = asyncio.Semaphore(cfg.max_concurrent_uploads)
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

    def _write(self, files: list[tuple[Path, bytearray]]) -> None:
        for path, blob in files:
            checkpoint.write_bytes_atomic(path, blob)

    def _checkpoint(self) -> None:
        self._write(self._snapshot())

    async def _checkpoint_in_background(self) -> None:
        """Snapshot now; write and fsync on the I/O thread while the next round runs.

        The round record is already in rounds.jsonl; if the process dies before the write lands,
        the previous checkpoint stays and resuming drops the record past it, so both agree."""
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(self._cpu, self._snapshot)
        self._pending_write = loop.run_in_executor(self._io, self._write, files)

    async def _flush_writes(self) -> None:
        if self._pending_write is not None:
            await self._pending_write
            self._pending_write = None

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
            if rnd and not rnd.closed and session.name in rnd.selected and session.name not in rnd.answered:
                rnd.gone.discard(session.name)
                session.outbox.put_nowait(rnd.task(session.name))  # a restarted client picks its task up again
        self._notify()
        return session

    def disconnect(self, session: Session) -> None:
        if not self.registry.disconnect(session):
            return
        logger.info("client %s disconnected; %d connected", session.name, len(self.registry))
        rnd = self._round
        if rnd and not rnd.closed and session.name in rnd.selected and session.name not in rnd.answered:
            rnd.gone.add(session.name)
            self._maybe_close(rnd)
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
        """Count a refused request (by reason) for the next round record, and say why in the log."""
        self._rejected[reason] += 1
        logger.warning("refused %s from client %s: %s", "call" if reason == "unauthenticated" else "update", name, message)

    async def receive_update(self, header: UpdateHeader, data: AsyncIterator[bytes]) -> str:
        """Stream one update in, check it completely, and fold it into the round's aggregate."""
        session = self.registry.session(header.session_id)
        name = session.name
        rnd = self._round
        try:
            self._admit(rnd, name, header)
        except UpdateRejected as exc:
            self.rejected_upload(exc.reason, name, str(exc))
            raise
        assert rnd is not None
        rnd.uploading.add(name)
        loop = asyncio.get_running_loop()
        try:
            async with self._staging:
                assembler = BlobAssembler(Manifest(header.total_bytes, header.sha256), rnd.expectation.max_blob_bytes,
                                          hash_while_receiving=False)
                async for piece in data:
                    if rnd.closed:
                        raise NotSelected("round_closed", f"round {rnd.number} closed while the update was arriving; discarded")
                    assembler.add(piece)
                tensors, clipped = await loop.run_in_executor(self._cpu, self._decode_and_check, assembler, rnd.expectation)
                if rnd.closed or self._round is not rnd:
                    raise NotSelected("round_closed", f"round {rnd.number} closed before the update was checked; discarded")
                rnd.answered[name] = header.num_examples
                rnd.metrics[name] = dict(header.metrics)
                rnd.bytes_up += header.total_bytes
                rnd.clipped += clipped
                folding = loop.run_in_executor(self._fold, rnd.accumulator.add, tensors, header.num_examples)
                self._maybe_close(rnd)
                await folding
        except (UpdateRejected, WireFormatError) as exc:
            self.rejected_upload(reason_of(exc), name, str(exc))
            raise
        except asyncio.CancelledError:  # the client vanished mid-upload: the partial update is dropped whole
            self._rejected["aborted"] += 1
            raise
        finally:
            rnd.uploading.discard(name)
            self._maybe_close(rnd)
            self._notify()
        return f"round {rnd.number}: update of {header.num_examples} examples accepted"

    def _admit(self, rnd: Round | None, name: str, header: UpdateHeader) -> None:
        if rnd is None or rnd.closed:
            raise NotSelected("round_closed", f"no round is open for this update (it answers round {header.round}); discarded")
        if header.round != rnd.number:
            raise NotSelected("stale_round", f"update answers round {header.round}, but round {rnd.number} is open; discarded")
        if name not in rnd.selected:
            raise NotSelected("not_selected", f"client {name} was not selected for round {rnd.number}")
        if name in rnd.answered or name in rnd.uploading:
            raise NotSelected("duplicate", f"client {name} already sent its update for round {rnd.number}")
        check_header(rnd.expectation, header)

    def _decode_and_check(self, assembler: BlobAssembler, expect: Expectation) -> tuple[dict[str, torch.Tensor], int]:
        """Off the event loop: verify the digest, decode (zero-copy), check, clip."""
        decoded = tensorcodec.decode(assembler.finish())
        norms = check_tensors(expect, decoded.tensors)
        _, clipped = clip_to_norm(decoded.tensors, expect.parameters, self.cfg.max_update_norm, norms)
        return decoded.tensors, int(clipped)

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
        if self.completed == 0 and self.cfg.keep_round_models:
            await loop.run_in_executor(self._cpu, self._save_model, self.cfg.run_dir / "models" / "round-0000.safetensors")
        if self.completed == 0 and self.cfg.eval_every and self.evaluator is not None:
            await self._initial_evaluation()
        while self.completed < self.cfg.rounds and not self._stop.is_set():
            if not await self._run_round(self.completed + 1):
                if self._stop.is_set():
                    break
                await self._flush_writes()
                return await self._finish(self._failure, failed=True)
        await self._flush_writes()
        if self._stop.is_set():
            await loop.run_in_executor(self._cpu, self._checkpoint_if_missing)
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
                self._close(rnd, "stopping" if self._stop.is_set() else f"deadline ({self.cfg.round_timeout:g}s)")
            await loop.run_in_executor(self._fold, lambda: None)  # every accepted fold has landed
            if self._stop.is_set():
                logger.warning("round %d abandoned: %s", number, self._stop_reason)
                self._round = None
                return False
            needed = min(self.cfg.min_fit_clients, rnd.target)
            if len(rnd.answered) >= needed:
                await self._complete_round(rnd)
                return True
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

        rnd = Round(number, attempt, selected, min(target, len(selected)), expect, task,
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

    def _maybe_close(self, rnd: Round | None) -> None:
        """Close at the target; close early when everyone still out has gone but enough answered to aggregate.
        With too few answers the round stays open until its deadline: a restarted client picks its task up again."""
        if rnd is None or rnd.closed:
            return
        if len(rnd.answered) >= rnd.target:
            self._close(rnd, "all selected answered" if rnd.target == len(rnd.selected) else f"target of {rnd.target} reached")
        elif (not rnd.uploading and not (set(rnd.selected) - set(rnd.answered) - rnd.gone)
              and len(rnd.answered) >= min(self.cfg.min_fit_clients, rnd.target)):
            self._close(rnd, f"{len(rnd.gone)} selected client(s) disconnected")

    def _close(self, rnd: Round, reason: str) -> None:
        rnd.closed = True
        rnd.closed_at = time.monotonic()
        rnd.close_reason = reason
        rnd.done.set()

    async def _complete_round(self, rnd: Round) -> None:
        loop = asyncio.get_running_loop()
        phases = {"train_and_collect": (rnd.closed_at or time.monotonic()) - rnd.started}
        mark = time.monotonic()
        mean = await loop.run_in_executor(self._fold, rnd.accumulator.mean)
        await loop.run_in_executor(self._fold, self.optimizer.step, self.model.state, mean, set(self.model.parameters), rnd.expectation.kind)
        phases["aggregate"], mark = time.monotonic() - mark, time.monotonic()
        self._publish(await loop.run_in_executor(self._cpu, self.model.prepare_trainable))
        phases["serialize"], mark = time.monotonic() - mark, time.monotonic()
        record = self._record(rnd)
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
        record.rejected = dict(self._rejected)  # everything refused since the previous record
        self._rejected.clear()
        await self._flush_writes()  # the previous round's checkpoint has landed
        phases["previous_write"], mark = time.monotonic() - mark, time.monotonic()
        record.phases = {k: round(v, 4) for k, v in phases.items()}
        self.round_log.append(record)
        await self._checkpoint_in_background()

    def _record(self, rnd: Round) -> RoundRecord:
        answered = sorted(rnd.answered)
        n = sum(rnd.answered.values())

        def weighted(key: str, weight_key: str | None = None) -> float:
            pairs = [(rnd.metrics[c].get(key), rnd.metrics[c].get(weight_key) if weight_key else rnd.answered[c]) for c in answered]
            pairs = [(v, w) for v, w in pairs if v is not None and w]
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if total else math.nan

        record = RoundRecord(
            round=rnd.number, rounds=self.cfg.rounds, selected=len(rnd.selected), answered=len(answered), examples=n,
            train_loss=weighted("train_loss"), train_accuracy=weighted("train_accuracy"),
            client_eval_accuracy=weighted("eval_accuracy", "eval_examples"),
            client_personal_accuracy=weighted("personal_accuracy", "eval_examples"),
            bytes_down=self._bytes_down, bytes_up=rnd.bytes_up, attempt=rnd.attempt, close_reason=rnd.close_reason,
            clipped=rnd.clipped, clients=answered,
        )
        self._bytes_down = 0
        users = sum(1 for c in answered if rnd.metrics[c].get("feature_cache"))
        builds = [rnd.metrics[c]["cache_build_seconds_train"] for c in answered if "cache_build_seconds_train" in rnd.metrics[c]]
        record.client_feature_cache = f"{users}/{len(answered)}" + (f" (built in up to {max(builds):.2f}s)" if builds else "")
        return record

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

    def _checkpoint_if_missing(self) -> None:
        if not (self.cfg.run_dir / store.CHECKPOINT).exists():
            self._checkpoint()

    def _model_blob(self) -> bytearray:
        """A plain state dict (loadable with --weights PATH) with what is needed to use it in its metadata."""
        r = self.recipe
        meta = {"model": r.model, "num_classes": str(r.num_classes), "image_size": str(r.image_size),
                "mean": ",".join(map(str, r.mean)), "std": ",".join(map(str, r.std)), "round": str(self.completed), "run_id": self.run_id}
        return tensorcodec.encode(self.model.full_state(), meta)

    def _save_model(self, path: Path) -> int:
        blob = self._model_blob()
        checkpoint.write_bytes_atomic(path, blob)
        return len(blob)

    def _save_final(self) -> None:
        size = self._save_model(self.output)
        logger.info("final model saved: %s (%.1f MB)", self.output, size / 1e6)

    async def _finish(self, reason: str, failed: bool) -> int:
        """Tell every client the run is over and give them a moment to hang up."""
        if self._rejected:
            logger.warning("refused after the last round record: %s", ", ".join(f"{k}={v}" for k, v in sorted(self._rejected.items())))
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
        self._io.shutdown(wait=True)
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
