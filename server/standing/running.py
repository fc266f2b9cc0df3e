"""A job while it runs, as the lobby offers it: a training job (a Coordinator, the same run `fedtl server` makes), a
statistics job (each site's example count and label histogram, for the operator to see the data before training), or a
cross-site evaluation (server/standing/evaluation.py).

A site that accepts a training job joins the job's coordinator like any client; its instructions are pumped into the
site's standing session stream, and the job's Finished reaches the site as `standing` (it stays for the next job).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from fedtl.common.config import Finished
from fedtl.common.errors import FedError
from fedtl.common.jobs import JobAnswer, JobOffer, ModelToEvaluate, SiteStatistics
from fedtl.server.config import ServerConfig
from fedtl.server.coordinator import Coordinator
from fedtl.server.registry import Registry, Session
from fedtl.server.sinks.console import safe
from fedtl.server.standing import terms
from fedtl.server.standing.terms import JobSettings

logger = logging.getLogger(__name__)
Log = Callable[[str], None]  # a line of the job's own log (server/standing/jobs.py)


class TrainingJob:
    def __init__(self, job_id: str, cfg: ServerConfig, settings: JobSettings, coordinator: Coordinator, log: Log) -> None:
        self.job_id, self.cfg, self.settings, self.coordinator, self.log = job_id, cfg, settings, coordinator, log
        self.joined: dict[str, tuple[Session, Session, asyncio.Task]] = {}  # site -> (its standing session, its job session, pump)
        self.pausing = False  # the coordinator stops for a restart: the job resumes then, so sites are not told it is over

    def terms(self, site: Session) -> JobOffer | None:
        return terms.offer(self.cfg, self.job_id, self.settings)

    def accepted(self, site: Session, answer: JobAnswer) -> None:
        try:
            session = self.coordinator.connect(site.hello, site.address)
        except FedError as exc:
            self.log(f"site {site.name} accepted but cannot join: {exc}")
            site.outbox.put_nowait(Finished(f"job {self.job_id}: {exc}", failed=True, standing=True))
            return
        self.log(f"site {site.name} accepted the job")
        self.joined[site.name] = (site, session, asyncio.get_running_loop().create_task(self._pump(site, session)))

    def refused(self, site: Session, reason: str) -> None:
        self.log(f"site {site.name} refused the job: {safe(reason)}")

    def left(self, site: Session) -> None:
        entry = self.joined.get(site.name)
        if entry is not None and entry[0] is site:
            del self.joined[site.name]
            entry[2].cancel()
            self.coordinator.disconnect(entry[1])

    async def _pump(self, site: Session, session: Session) -> None:
        """The job's instructions into the site's stream, until the job's Finished (or an error that ends the session)."""
        try:
            while True:
                item = await session.outbox.get()
                if isinstance(item, Finished):
                    if not (item.resume and self.pausing):  # paused for a restart: the lobby tells every site to reconnect
                        site.outbox.put_nowait(replace(item, resume=False, standing=True))
                    return
                site.outbox.put_nowait(item)
                if isinstance(item, Exception):
                    return
        finally:
            self.coordinator.disconnect(session)

    async def stop_pumps(self) -> None:
        for _, _, task in list(self.joined.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class AnsweringJob(abc.ABC):
    """A job each site does by answering its offer (statistics, evaluation): the shards are the ones a training job with the
    same flags would assign, over the sites connected when it starts; it is done once every site answered or left."""

    def __init__(self, job_id: str, cfg: ServerConfig, settings: JobSettings, sites: list[Session], pins: dict[str, int], log: Log) -> None:
        self.job_id, self.cfg, self.settings, self.log = job_id, cfg, settings, log
        self.plan = Registry(cfg.partitions, pins=pins)
        for site in sites:
            self.plan.connect(site.hello, 0.0, "")
        self.plan.fix_partitions()
        self.waiting: set[str] = {s.name for s in sites}
        self.refusals: dict[str, str] = {}
        self.done = asyncio.Event()
        self.done_hook: Callable[[], None] = lambda: None  # the standing loop looks again
        if not self.waiting:
            self.done.set()

    def terms(self, site: Session) -> JobOffer | None:
        if site.name not in self.waiting:
            return None  # joined after the shards were fixed: not part of this job
        return terms.offer(self.cfg, self.job_id, self.settings, self.plan.assignment(site.name), self.models())

    def models(self) -> tuple[ModelToEvaluate, ...]:
        return ()

    def accepted(self, site: Session, answer: JobAnswer) -> None:
        if (problem := self.take(site.name, answer)):
            self.refused(site, problem)
            return
        site.outbox.put_nowait(Finished(f"{self.settings.kind} job {self.job_id} done", standing=True))
        self._answered(site.name)

    @abc.abstractmethod
    def take(self, name: str, answer: JobAnswer) -> str:
        """Keep a site's answer; what is wrong with it ("": nothing)."""

    def refused(self, site: Session, reason: str) -> None:
        self.refusals[site.name] = reason
        self.log(f"site {site.name} refused the job: {safe(reason)}")
        self._answered(site.name)

    def left(self, site: Session) -> None:
        if site.name in self.waiting:
            self.log(f"site {site.name} left before it answered")
            self._answered(site.name)

    def _answered(self, name: str) -> None:
        self.waiting.discard(name)
        if not self.waiting:
            self.done.set()
            self.done_hook()


class StatisticsJob(AnsweringJob):
    """Each accepting site's example count and label histogram (noised when the job sets --statistics-epsilon)."""

    def __init__(self, job_id: str, cfg: ServerConfig, settings: JobSettings, sites: list[Session], pins: dict[str, int], log: Log) -> None:
        self.results: dict[str, SiteStatistics] = {}
        super().__init__(job_id, cfg, settings, sites, pins, log)

    def take(self, name: str, answer: JobAnswer) -> str:
        s = answer.statistics
        if s is None:
            return "it accepted without its statistics"
        self.results[name] = s
        counts = ", ".join(f"{safe(n, 40)} {count:g}" for n, count in zip(s.class_names, s.counts, strict=True))
        self.log(f"site {name}: {s.examples:g} examples ({counts})")
        return ""

    def summary(self) -> dict:
        """The job's results file: each site's counts by class name, their totals, and who refused why."""
        total: dict[str, float] = {}
        for s in self.results.values():
            for name, count in zip(s.class_names, s.counts, strict=True):
                total[name] = total.get(name, 0.0) + count
        return {"epsilon": self.settings.statistics_epsilon,
                "sites": {n: {"examples": s.examples, "classes": dict(zip(s.class_names, s.counts, strict=True))}
                          for n, s in sorted(self.results.items())},
                "total": {"examples": sum(s.examples for s in self.results.values()), "classes": total},
                "refused": dict(sorted(self.refusals.items()))}
