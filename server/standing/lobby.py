"""The sites connected to a standing coordinator, between jobs and during them.

A site's session stream outlives every job: the lobby offers it each job (JobOffer), takes its answer, and the job it
accepted speaks through the same stream (server/standing/running.py pumps a job's instructions into it). Joins are
limited and names bound to identities exactly as in a single run (server/registry.py, server/admission.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fedtl.common.config import PROTOCOL, Finished, Hello
from fedtl.common.errors import FederationRefused, NotSelected, Overloaded
from fedtl.common.jobs import JobAnswer, JobOffer
from fedtl.server.admission import JoinLimiter, address_of
from fedtl.server.clock import Clock
from fedtl.server.registry import Registry, Session
from fedtl.server.settings.data import PartitionPlan
from fedtl.server.settings.transport import Limits

logger = logging.getLogger(__name__)


class OfferedJob(Protocol):
    """A job while it runs, as the lobby sees it (server/standing/running.py)."""

    job_id: str

    def terms(self, site: Session) -> JobOffer | None: ...  # None: not offered to this site
    def accepted(self, site: Session, answer: JobAnswer) -> None: ...
    def refused(self, site: Session, reason: str) -> None: ...
    def left(self, site: Session) -> None: ...


@dataclass
class Offer:
    site: Session
    terms: JobOffer


class Lobby:
    def __init__(self, limits: Limits, pins: dict[str, int], clock: Clock) -> None:
        self.sites = Registry(PartitionPlan(0, "iid", 0.5, 2, 0, 0.0, 0), max_clients=limits.max_clients,
                              per_address=limits.max_clients_per_address, pins=pins)
        self.joins = JoinLimiter(limits.join_rate, limits.join_rate_total)
        self.clock = clock
        self.job: OfferedJob | None = None
        self.offers: dict[str, Offer] = {}  # offer id -> the open offer
        self.on_change: Callable[[], None] = lambda: None  # a site joined, left or answered: the standing loop looks again

    def connect(self, hello: Hello, peer: str) -> Session:
        if hello.protocol != PROTOCOL:
            raise FederationRefused(f"client speaks protocol {hello.protocol!r}, this server {PROTOCOL!r}: run the same release on both")
        address = address_of(peer)
        if refusal := self.joins.admit(address, self.clock.monotonic()):
            raise Overloaded(refusal)
        site, old = self.sites.connect(hello, self.clock.monotonic(), address)
        if old is not None:
            self._forget(old)
        logger.info("site %s connected (%d connected)%s", site.name, len(self.sites), "" if self.job is None else f"; offering {self.job.job_id}")
        if self.job is not None:
            self._offer(site, self.job)
        self.on_change()
        return site

    def disconnect(self, site: Session) -> None:
        if self.sites.disconnect(site):
            logger.info("site %s disconnected (%d connected)", site.name, len(self.sites))
            self._forget(site)
            self.on_change()

    def _forget(self, site: Session) -> None:
        for offer_id in [k for k, o in self.offers.items() if o.site is site]:
            del self.offers[offer_id]
        if self.job is not None:
            self.job.left(site)

    def start(self, job: OfferedJob) -> int:
        """Offer `job` to every connected site (and to each that connects while it runs); returns how many were offered."""
        self.job = job
        names = self.sites.connected()
        for name in names:
            site = self.sites.by_name(name)
            if site is not None:
                self._offer(site, job)
        return len(names)

    def end(self) -> None:
        """The job is over: its open offers lapse (the job itself told the sites in it)."""
        self.job, self.offers = None, {}

    def _offer(self, site: Session, job: OfferedJob) -> None:
        terms = job.terms(site)
        if terms is not None:
            self.offers[terms.offer_id] = Offer(site, terms)
            site.outbox.put_nowait(terms)

    def offer_site(self, offer_id: str) -> str:
        """The name the offer went to: only that site's credential may answer it."""
        offer = self.offers.get(offer_id)
        if offer is None:
            raise NotSelected("no_offer", "no open job offer has this id (the job ended, or the site reconnected and got a new one)")
        return offer.site.name

    def answer(self, answer: JobAnswer) -> None:
        offer = self.offers.pop(answer.offer_id, None)
        if offer is None or self.job is None or offer.terms.job_id != self.job.job_id:
            raise NotSelected("no_offer", "no open job offer has this id (the job ended, or the site reconnected and got a new one)")
        if answer.accept:
            self.job.accepted(offer.site, answer)
        else:
            self.job.refused(offer.site, answer.reason)
        self.on_change()

    def close(self, final: Finished) -> None:
        """The coordinator stops: every site is told (resume: it reconnects when the coordinator is back)."""
        for name in self.sites.connected():
            site = self.sites.by_name(name)
            if site is not None:
                site.outbox.put_nowait(final)
