"""The standing coordinator's loop: jobs one after another, each the same run `fedtl server` makes, in its own folder.

Operators submit (checked completely at submission, so a bad job never queues), list, read and stop jobs; a job left
running by a coordinator that died resumes first when it comes back (its run folder's checkpoint), then the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from fedtl.common.checkpoint import write_json_atomic
from fedtl.common.cli import describe_failure
from fedtl.common.config import Finished
from fedtl.common.errors import ConfigError, FedError
from fedtl.common.jobs import FINAL_STATES, JobStatus
from fedtl.server import app
from fedtl.server.auth import Authenticator
from fedtl.server.clock import Clock, SystemClock
from fedtl.server.config import ServerConfig
from fedtl.server.events import CrossEvaluation, EventBus, RunFinished, RunStarted
from fedtl.server.observe import Observers
from fedtl.server.observe.settings import TOKEN_ENV as DASHBOARD_TOKEN_ENV
from fedtl.server.standing import job_log, terms
from fedtl.server.standing.evaluation import Evaluated, EvaluationJob, evaluated
from fedtl.server.standing.federation import StandingFederation
from fedtl.server.standing.jobs import Job, JobStore
from fedtl.server.standing.lobby import Lobby
from fedtl.server.standing.running import StatisticsJob, TrainingJob

logger = logging.getLogger(__name__)
MAX_QUEUED = 1000  # jobs waiting at once: what an operator's submissions may hold of the coordinator's disk and memory
OFFER_WAIT = 10.0  # seconds a training job waits for the sites' answers to its offer before its coordinator starts


class UnknownJob(FedError):
    """No job has this id."""


class Standing:
    def __init__(self, cfg: ServerConfig, argv: list[str], env: Mapping[str, str], clock: Clock | None = None) -> None:
        assert cfg.standing is not None
        self.cfg, self.env = cfg, dict(env)
        if cfg.observe.token_generated:  # one dashboard token for every job's view, not one per job
            self.env[DASHBOARD_TOKEN_ENV] = cfg.observe.token
            logger.warning("dashboard and metrics token for every job of this coordinator: %s (made at start: give --dashboard-token "
                           "or %s to keep one across restarts)", cfg.observe.token, DASHBOARD_TOKEN_ENV)
        self._observers: Observers | None = None  # the running (or last) training job's dashboard, metrics and TensorBoard
        self.store = JobStore(cfg.run_dir)
        self.defaults, self.infrastructure = terms.split_infrastructure(argv)
        self.pins = Authenticator.from_files(cfg.token, cfg.tokens_file).pins
        self.lobby = Lobby(cfg.limits, self.pins, clock or SystemClock())
        self.federation = StandingFederation(self.lobby, cfg.limits)
        self.listen_address = ""
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self._wake = asyncio.Event()
        self._running: TrainingJob | StatisticsJob | EvaluationJob | None = None
        self._stop_asked: set[str] = set()
        self.lobby.on_change = self._wake.set

    # ================================================================ operators

    def submit(self, flags: list[str], toml: str) -> Job:
        """Checked as `fedtl server` checks its flags, against this coordinator's files; queued only if it would start."""
        settings = terms.job_settings(flags)
        if sum(1 for j in self.store.all() if j.state == "queued") >= MAX_QUEUED:
            raise ConfigError(f"{MAX_QUEUED} jobs are queued already: wait for some to run, or stop some (fedtl stop)")
        for job_id in settings.evaluate:  # its final model is read when the job runs: it may still be queued now
            named = self._job(job_id)
            if named.kind != "train" or named.state in ("failed", "stopped"):
                raise ConfigError(f"--evaluate {job_id}: a {named.kind} job that is {named.state}; name training jobs that are done, "
                                  "running or queued")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "job.toml"
            path.write_text(toml, encoding="utf-8")
            cfg = self._config(settings, path if toml else None, Path(scratch) / "run")
        job = self.store.submit(settings.kind, flags, toml, cfg.schedule.rounds if settings.kind == "train" else 0)
        self.store.log(job.id, f"submitted ({settings.kind}{': ' + ' '.join(flags) if flags else ''}{'; with a job file' if toml else ''})")
        logger.info("job %s submitted (%s)", job.id, settings.kind)
        self._wake.set()
        return job

    def statuses(self) -> list[JobStatus]:
        return [job.status(self.store.folder(job.id)) for job in self.store.all()]

    def status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        return job.status(self.store.folder(job.id))

    def stop(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        if job.state in FINAL_STATES:
            raise ConfigError(f"job {job_id} has already ended ({job.state})")
        if job.state == "queued":
            job = self.store.update(job, state="stopped", detail="stopped by an operator before it started")
            self.store.log(job_id, "stopped by an operator before it started")
        else:
            self._stop_asked.add(job_id)
            self.store.log(job_id, "an operator asked the job to stop")
            if isinstance(self._running, TrainingJob) and self._running.job_id == job_id:
                self._running.coordinator.request_stop(f"job {job_id} stopped by an operator")
            self._wake.set()
        return job.status(self.store.folder(job_id))

    def log_lines(self, job_id: str, follow: bool) -> AsyncIterator[str]:
        """The job's own log and its round log, merged by time; following, until the job has ended."""
        self._job(job_id)
        return job_log.lines([self.store.folder(job_id) / "events.jsonl", self.store.run_dir(job_id) / "rounds.jsonl"],
                             lambda: self._job(job_id).state in FINAL_STATES, follow, self.stopping)

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id[:64]!r} on this coordinator (fedtl ls lists them)")
        return job

    def _config(self, settings: terms.JobSettings, toml: Path | None, run_dir: Path) -> ServerConfig:
        assert self.cfg.standing is not None
        return terms.job_config(self.defaults, self.infrastructure, settings, toml, run_dir, self.env, self.cfg.standing.allow_job_plugins)

    # ================================================================ the loop

    def request_stop(self, reason: str) -> None:
        """The coordinator itself stops (a signal): the running job pauses and resumes when it is restarted."""
        if not self.stopping.is_set():
            logger.warning("stopping: %s", reason)
            self.stop_reason = reason
            self.stopping.set()
            self._wake.set()
            if isinstance(self._running, TrainingJob):
                self._running.pausing = True
                self._running.coordinator.request_stop(reason)

    async def run(self) -> int:
        queued = [j.id for j in self.store.all() if j.state in ("queued", "running")]
        logger.info("standing coordinator on %s: %d job(s) to run (%s)", self.listen_address, len(queued), ", ".join(queued) or "none yet")
        while not self.stopping.is_set():
            job = self.store.next_to_run()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._run(job)
        self.lobby.close(Finished(f"the coordinator stopped ({self.stop_reason}); it carries on with its jobs when restarted", resume=True))
        return 0

    async def _run(self, job: Job) -> None:
        resumed = job.state == "running"
        job = self.store.update(job, state="running", started=job.started or time.time(), detail="")
        self.store.log(job.id, "resumed after the coordinator restarted" if resumed else "started")
        settings = terms.job_settings(list(job.flags))
        try:
            cfg = self._config(settings, self.store.toml_path(job.id) if job.has_toml else None, self.store.run_dir(job.id))
            if settings.kind != "train":
                state, detail = await self._answering(job, cfg, settings)
            else:
                state, detail = await self._train(job, cfg, settings)
        except Exception as exc:  # noqa: BLE001 - a job that breaks fails alone; the coordinator takes the next one
            logger.exception("job %s failed", job.id)
            state, detail = "failed", describe_failure(exc)
        if state == "running":  # paused by the coordinator's own stop: it resumes on restart
            self.store.log(job.id, f"paused: the coordinator stopped ({self.stop_reason}); it resumes when restarted")
            return
        job = self.store.update(self._job(job.id), state=state, detail=detail)
        self.store.log(job.id, f"{state}: {detail}")
        logger.info("job %s %s: %s", job.id, state, detail)

    async def _train(self, job: Job, cfg: ServerConfig, settings: terms.JobSettings) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        observers = await loop.run_in_executor(None, self._observe, cfg)
        coordinator = await loop.run_in_executor(None, functools.partial(app.build, cfg, sinks=observers.sinks))
        coordinator.listen_address = self.listen_address
        running = TrainingJob(job.id, cfg, settings, coordinator, functools.partial(self.store.log, job.id))
        self._running, self.federation.coordinator = running, coordinator
        try:
            if job.id in self._stop_asked or self.stopping.is_set():
                coordinator.request_stop("stopped before it started")
            self.store.log(job.id, f"offered to {self.lobby.start(running)} connected site(s)")
            await self._offers_answered(job)  # the sites that accept join before round 1 fixes the shards
            code = await coordinator.run()
        finally:
            self.lobby.end()
            await running.stop_pumps()
            self._running, self.federation.coordinator = None, None
            if coordinator.run_folder is not None:
                coordinator.run_folder.release()
        final = coordinator.final
        reason = final.reason if final is not None else "ended"
        if running.pausing:
            return "running", reason
        if job.id in self._stop_asked:
            return "stopped", reason
        return ("done" if code == 0 and final is not None and not final.resume and not final.failed else "failed"), reason

    def _observe(self, cfg: ServerConfig) -> Observers:
        """The job's dashboard view (and metrics, TensorBoard) on the coordinator's ports: the last job's stays up until the
        next one starts, so the page always shows the running job, or the one that ended last."""
        self.close_observers()
        observers = Observers(cfg.observe, cfg.run_dir, cfg.output or cfg.run_dir / "final_model.safetensors", tls_cert=cfg.tls_cert,
                              tls_key=cfg.tls_key)
        self._observers = observers
        observers.start()
        return observers

    def close_observers(self) -> None:
        if self._observers is not None:
            self._observers.stop()
            self._observers = None

    async def _answering(self, job: Job, cfg: ServerConfig, settings: terms.JobSettings) -> tuple[str, str]:
        """A statistics or evaluation job: once --min-clients sites are connected, each answers its offer."""
        models = self._models(settings.evaluate, cfg.chunk_bytes) if settings.kind == "evaluate" else []
        bus = EventBus()  # an evaluation's matrix on the dashboard, where the coordinator serves one
        if models:
            for sink in (await asyncio.get_running_loop().run_in_executor(None, self._observe, cfg)).sinks:
                bus.subscribe(sink, critical=False)
            bus.publish(RunStarted(job.id, 0, False, 0, "cross-site evaluation", self.listen_address))
        while len(self.lobby.sites) < cfg.schedule.min_clients and not self.stopping.is_set() and job.id not in self._stop_asked:
            self._wake.clear()
            await self._wake.wait()
        if self.stopping.is_set():
            return "running", "paused"
        if job.id in self._stop_asked:
            return "stopped", "stopped by an operator"
        sites = [s for n in self.lobby.sites.connected() if (s := self.lobby.sites.by_name(n)) is not None]
        log = functools.partial(self.store.log, job.id)
        running: StatisticsJob | EvaluationJob = (EvaluationJob(job.id, cfg, settings, sites, self.pins, log, models) if models else
                                                  StatisticsJob(job.id, cfg, settings, sites, self.pins, log))
        self._running = self.federation.answering = running
        try:
            running.done_hook = self._wake.set
            self.store.log(job.id, f"offered to {self.lobby.start(running)} connected site(s)")
            await self._answered(job, running)
            if isinstance(running, EvaluationJob) and settings.personal and self._carries_on(job):
                personal = await asyncio.get_running_loop().run_in_executor(None, running.personal_models)
                if personal:
                    self.lobby.end()
                    running.start_personal(personal, set(self.lobby.sites.connected()))
                    self.store.log(job.id, f"personal models of {len(personal)} site head(s) offered to {self.lobby.start(running)} site(s)")
                    await self._answered(job, running)
        finally:
            self.lobby.end()
            self._running = self.federation.answering = None
        if self.stopping.is_set():
            return "running", "paused"
        summary = running.summary()
        name = "statistics.json" if isinstance(running, StatisticsJob) else "evaluation.json"
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.run_dir / name, summary)
        state = "stopped" if job.id in self._stop_asked else "done"
        answered = f"{len(summary['sites'])} site(s) answered, {len(summary['refused'])} refused"
        if isinstance(running, StatisticsJob):
            return state, f"{answered}: {summary['total']['examples']:g} examples in all; per site and class in {cfg.run_dir / name}"
        detail = f"{answered}: accuracy {running.table() or 'none'}; the matrix in {cfg.run_dir / name}"
        bus.publish(CrossEvaluation(job.id, tuple(summary["models"]), tuple(summary["sites"]), summary["accuracy"]))
        bus.publish(RunFinished("completed" if state == "done" else state, 0, detail, None))
        return state, detail

    async def _offers_answered(self, job: Job) -> None:
        """Until every open offer is answered (a site that accepts has joined then), for at most OFFER_WAIT seconds: a site
        that never answers does not hold the job up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OFFER_WAIT
        while self.lobby.offers and self._carries_on(job) and loop.time() < deadline:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())

    def _carries_on(self, job: Job) -> bool:
        return not self.stopping.is_set() and job.id not in self._stop_asked

    async def _answered(self, job: Job, running: StatisticsJob | EvaluationJob) -> None:
        """Until every site offered the job answered or left (or the job or the coordinator stops)."""
        while not running.done.is_set() and self._carries_on(job):
            self._wake.clear()
            await self._wake.wait()

    def _models(self, job_ids: tuple[str, ...], chunk_bytes: int) -> list[Evaluated]:
        """The named training jobs' final models, each serialised once for every site's download."""
        models = []
        for job_id in job_ids:
            try:
                models.append(evaluated(job_id, (self.store.run_dir(job_id) / "final_model.safetensors").read_bytes(), chunk_bytes))
            except (OSError, KeyError, FedError) as exc:
                raise ConfigError(f"--evaluate {job_id}: no final model to evaluate ({type(exc).__name__}: {exc})") from None
        return models
