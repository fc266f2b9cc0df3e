"""The coordinator: the run's parts in one place, and what the gRPC servicer may ask of them.

Parts: the client registry (sessions, partitions), the served model versions, the strategy, the
update intake, the event bus, the clock and the checkpointable state. The run itself (waiting,
rounds, retries, the end) is server/run_loop.py; one round's rules are server/rounds.py.

Concurrency: all state here lives on the asyncio event loop and is touched only from it, so it
needs no lock. CPU work leaves the loop: decoding and checks go to a small pool, folds into the
aggregate to a single worker thread. Folds and the round's final `result()` queue on that one
FIFO thread, so an update accepted before the round closed is always in the aggregate and none
is ever half-counted. Staged uploads are bounded by a semaphore, so memory is
(aggregate + a few updates) x model size, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedtl.common import plugin_refs, user_code
from fedtl.common.cli import describe_failure
from fedtl.common.config import PROTOCOL, Finished, Hello, ModelRecipe, UpdateHeader, Welcome
from fedtl.common.errors import FederationRefused, NotSelected, Overloaded, UpdateRejected, WireFormatError
from fedtl.server import store
from fedtl.server.admission import JoinLimiter, address_of
from fedtl.server.best_model import BEST_MODEL, BestModel
from fedtl.server.checkpoints import Checkpointer, fingerprint
from fedtl.server.clock import Clock, SystemClock, Wakeup
from fedtl.server.completion import RoundCompletion
from fedtl.server.config import ServerConfig
from fedtl.server.divergence import LossWatch
from fedtl.server.evaluation import Evaluations, ServerEvaluator
from fedtl.server.events import ClientJoined, ClientLeft, ClientsAdded, EventBus
from fedtl.server.intake import Refused, UpdateIntake
from fedtl.server.model_state import GlobalModel, PreparedSegment
from fedtl.server.progress import Piece, Progress
from fedtl.server.registry import Registry, Session
from fedtl.server.rounds import Phase, Round
from fedtl.server.run_folder import RunFolder
from fedtl.server.run_loop import RunLoop, RunParts, RunState
from fedtl.server.selection import Selector
from fedtl.server.serving import ModelServer
from fedtl.server.shard_sizes import ShardSizes
from fedtl.server.state import StateRegistry
from fedtl.server.statistics_rounds import StatisticsRounds
from fedtl.server.strategies import build_strategy
from fedtl.server.strategies.base import Strategy

__all__ = ["Coordinator"]

logger = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, cfg: ServerConfig, model: GlobalModel, evaluator: ServerEvaluator | None, recipe: ModelRecipe, output: Path,
                 *, strategy: Strategy | None = None, clock: Clock | None = None, bus: EventBus | None = None, data_digest: str = "",
                 pins: Mapping[str, int] | None = None, train_labels: np.ndarray | None = None,
                 root_update: Callable[[], Mapping] | None = None, validator: ServerEvaluator | None = None) -> None:
        self.cfg = cfg
        self.data_digest = data_digest  # the test split's content: part of what a checkpoint must match
        self.run_folder: RunFolder | None = None  # locked for as long as this coordinator runs
        self.model = model
        self.evaluator = evaluator
        self.recipe = recipe
        self.output = output
        self.clock = clock or SystemClock()
        self.bus = bus or EventBus(self.clock)
        self.registry = Registry(cfg.partitions, max_clients=cfg.limits.max_clients, per_address=cfg.limits.max_clients_per_address, pins=pins)
        self.shard_sizes = ShardSizes(train_labels, self.registry)
        self.strategy = strategy or build_strategy(cfg.strategy, spill_dir=cfg.run_dir / "spill", caps=self.shard_sizes.cap,
                                                   root_update=root_update, privacy_ledger=cfg.run_dir / "privacy_ledger.json")
        self.joins = JoinLimiter(cfg.limits.join_rate, cfg.limits.join_rate_total)
        self.serving = ModelServer(cfg.limits.max_concurrent_downloads)
        self.rng = random.Random(cfg.seed)
        self.selector = Selector(cfg.schedule, self.rng)
        self.listen_address = cfg.address  # the bound address, once the transport knows the port
        self.run_state = RunState()  # the open round, the last word to clients, the stop request: shared with the run loop
        self.wakeup = Wakeup(self.clock)
        self.cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedtl-cpu")
        self.fold = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-fold")
        self.intake = UpdateIntake(self.cpu, self.fold, cfg.limits, self.bus, self.clock)
        self.state = StateRegistry()
        self.checkpoints = Checkpointer(cfg, recipe, model, self.state, self.rng, self.clock, self.cpu, self.bus, output,
                                        fingerprint(cfg, recipe, data_digest))
        self.state.register("strategy", lambda: (self.strategy.state_dict(), {}), lambda t, _: self.strategy.load_state_dict(t))
        self.state.register("clients", lambda: ({}, self.registry.state()), lambda _, v: self.registry.restore(v))
        self.loss_watch = LossWatch()
        self.state.register("loss", lambda: ({}, self.loss_watch.state()), lambda _, v: self.loss_watch.restore(v))
        st = cfg.strategy
        advice = f"Lower --server-lr (now {st.lr:g} with --server-optimizer {st.optimizer}) or the clients' --lr"
        self.evaluations = Evaluations(evaluator, self.bus, self.cpu, self.loss_watch, advice) if evaluator is not None else None
        self.best = (BestModel(validator, cfg.run_dir / BEST_MODEL, self._blob, self.state) if validator is not None else None)
        if self.best is not None:
            self.checkpoints.landed.append(self.best.landed)
        caps = (lambda _: cfg.strategy.weight_cap) if cfg.strategy.weight_cap else self.shard_sizes.cap
        self.statistics = StatisticsRounds(cfg.statistics, model.net, model.first_trainable, frozenset(model.trainable), cfg.schedule.rounds,
                                           caps)
        self.completion = RoundCompletion(
            model=model, strategy=self.strategy, serving=self.serving, evaluator=evaluator, evaluations=self.evaluations,
            checkpoints=self.checkpoints, intake=self.intake, bus=self.bus, clock=self.clock, cpu=self.cpu, fold=self.fold,
            schedule=cfg.schedule, download_codec=cfg.download_codec, statistics=self.statistics, best=self.best,
            summary=_metric_aggregation(cfg.metric_aggregation), summary_ref=cfg.metric_aggregation)  # the operator's function: fails at start

    def _blob(self, number: int) -> bytearray:
        return store.model_blob(self.recipe, self.model.full_state(), number, self.checkpoints.run_id)

    @property
    def run_id(self) -> str:
        return self.checkpoints.run_id  # the run's identity is part of its checkpointed state

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint, if it has one (see server/checkpoints.py)."""
        return self.checkpoints.resume()

    async def run(self) -> int:
        """Drive the whole run; return the process exit code. A run that breaks tells its clients why before it ends
        (a full disk, say), so they stop instead of waiting --max-wait for a server that is not coming back."""
        parts = RunParts(self.cfg, self.run_state, self.registry, self.selector, self.model, self.serving, self.strategy,
                         self.checkpoints, self.completion, self.evaluations, self.intake, self.bus, self.clock, self.wakeup, self.cpu,
                         self.fold, self.send, self.tell_clients, self.statistics)
        try:
            return await RunLoop(parts).run(self.listen_address)
        except Exception as exc:
            await self.tell_clients(Finished(f"the server stopped on an error: {describe_failure(exc)}", failed=True), grace=2.0)
            raise

    async def tell_clients(self, final: Finished, grace: float) -> None:
        """Every connected client gets `final` (and any that joins later); wait up to `grace` seconds for them to hang up."""
        self.run_state.final = final
        for name in self.registry.connected():
            session = self.registry.by_name(name)
            if session is not None:
                session.outbox.put_nowait(final)
        deadline = self.clock.monotonic() + grace
        while len(self.registry) and self.clock.monotonic() < deadline:
            await self.wakeup.wait(deadline - self.clock.monotonic())

    @property
    def round(self) -> Round | None:
        return self.run_state.round

    @property
    def final(self) -> Finished | None:
        return self.run_state.final

    @property
    def stopping(self) -> asyncio.Event:
        return self.run_state.stopping

    @property
    def stop_reason(self) -> str:
        return self.run_state.stop_reason

    # ================================================================ servicer-facing (event loop only)

    def connect(self, hello: Hello, peer: str = "") -> Session:
        try:
            return self._connect(hello, peer)
        except FederationRefused as exc:  # the client is told; the operator sees it too (a site locked out by its name, ...)
            self.intake.refuse("join_refused", hello.client_name[:64], str(exc))
            raise

    def _connect(self, hello: Hello, peer: str) -> Session:
        if hello.protocol != PROTOCOL:
            raise FederationRefused(f"client speaks protocol {hello.protocol!r}, this server {PROTOCOL!r}: run the same release on both")
        address = address_of(peer)
        refusal = self.joins.admit(address, self.clock.monotonic())
        if refusal:
            raise Overloaded(refusal)
        session, old = self.registry.connect(hello, self.clock.monotonic(), address)
        try:
            assignment = self.registry.assignment(session.name)
        except FederationRefused:
            self.registry.disconnect(session)
            raise
        session.outbox.put_nowait(Welcome(session.session_id, self.run_id, self.recipe, assignment))
        index, count = (assignment.partition_index, assignment.partition_count) if assignment and assignment.scheme != "none" else (None, None)
        self.bus.publish(ClientJoined(session.name, hello.hostname[:64], hello.device[:64], index, count, old is not None, len(self.registry)))
        if self.final is not None:
            session.outbox.put_nowait(self.final)
        elif self.round is not None and (again := self.round.rejoin(session.name)) is not None:
            session.outbox.put_nowait(again)  # a restarted client picks its task up again
        self.wakeup.notify()
        return session

    def leave(self, session_id: str, reason: str) -> None:
        """The client says why it goes, then closes its session: a round stops waiting for it now, and the log says why."""
        self.disconnect(self.registry.session(session_id), reason)

    def disconnect(self, session: Session, reason: str = "") -> None:
        if not self.registry.disconnect(session):
            return
        rnd = self.round
        awaited = rnd is not None and rnd.leave(session.name)
        self.bus.publish(ClientLeft(session.name, len(self.registry), awaited, reason))
        if rnd is not None and awaited:
            self._short_of(rnd)
        self.wakeup.notify()

    def _short_of(self, rnd: Round) -> None:
        """A selected client left or is out of the round: over-selection asks spares in; the phase may close."""
        added = self.selector.spares(rnd.shortfall(), self.registry.connected(), rnd.selected, self.registry.addresses())
        if added:
            rnd.add(added)
            self.send(rnd.phase, added)
            self.bus.publish(ClientsAdded(rnd.number, tuple(added)))
        rnd.phase.close_if_due(self.clock.monotonic())

    def send(self, phase: Phase, names: list[str] | None = None) -> None:
        """A phase's instruction to its clients (all expected, or these), through their session streams."""
        for name in phase.expected if names is None else names:
            session = self.registry.by_name(name)
            if session is not None:
                session.outbox.put_nowait(phase.instruction(name))
            else:
                phase.gone.add(name)  # left during an earlier phase: the phase need not wait for it unless it comes back

    def _refused(self, rnd: Round | None, name: str, refusal: Refused) -> Exception:
        """The one place a refusal changes a round: the round says whether the client is out, and then it is short."""
        if rnd is not None and rnd.refuse(name, refusal.reason):
            self._short_of(rnd)
        return refusal.error

    def segment(self, session_id: str, digest: str) -> PreparedSegment:
        """A model version for a client with an open task: nobody else has a reason to hold a download slot."""
        name = self.registry.session(session_id).name
        if self.round is None or not self.round.pending(name):
            raise NotSelected("no_task", f"client {name} has no open task; downloads serve the clients selected for the round")
        return self.serving.segment(digest)

    @contextlib.contextmanager
    def download_slot(self, session_id: str) -> Iterator[Progress]:
        """One download at a time per session, timed by the transfer limits."""
        session = self.registry.session(session_id)
        if session.downloading:
            raise Overloaded(f"client {session.name} already has a download running; one at a time")
        session.downloading = True
        try:
            yield Progress(self.clock, self.cfg.limits.stall_timeout, self.cfg.limits.min_transfer_rate)
        finally:
            session.downloading = False

    @property
    def sending(self) -> asyncio.Semaphore:
        return self.serving.sending

    def session_name(self, session_id: str) -> str:
        return self.registry.session(session_id).name

    def downloaded(self, nbytes: int) -> None:
        self.serving.sent(nbytes)

    def rejected_upload(self, reason: str, name: str, message: str) -> None:
        self.intake.refuse(reason, name, message)

    async def receive_update(self, header: UpdateHeader, data: AsyncIterator[Piece]) -> str:
        """Stream one update in, check it completely, and fold it into the round's aggregate."""
        name, rnd = self.registry.session(header.session_id).name, self.round
        try:
            outcome = await self.intake.receive(rnd, name, header, data, self.clock.monotonic)
            if isinstance(outcome, Refused):
                raise self._refused(rnd, name, outcome)
            return outcome.detail
        finally:
            self.wakeup.notify()

    def exchange(self, session_id: str, round_number: int, message: object) -> str:
        """A client's message in a phase of the round's protocol (secure aggregation's keys, shares, tags, reveals)."""
        name, rnd = self.registry.session(session_id).name, self.round
        try:
            if rnd is None:
                raise NotSelected("round_closed", f"no round is open for this message (it answers round {round_number}); discarded")
            rnd.exchange(name, round_number, message, self.clock.monotonic())
        except (UpdateRejected, WireFormatError) as exc:  # a message no honest client sends, or it withdrew
            raise self._refused(rnd, name, self.intake.refused(exc, name, round_number)) from None
        finally:
            self.wakeup.notify()
        return f"round {rnd.number}: {rnd.phase.name} answer taken"

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            logger.warning("stopping: %s", reason)
            self.run_state.stop_reason = reason
            self.stopping.set()
            self.wakeup.notify()


def _metric_aggregation(ref: str) -> Callable[[list[tuple[int, dict[str, float]]]], dict[str, float]] | None:
    if not ref:
        return None
    function = plugin_refs.load(ref, "--metric-aggregation")
    return functools.partial(user_code.aggregate_metrics, function, ref=ref)
