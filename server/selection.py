"""Which clients train this round: a seeded, reproducible sample of the connected ones. Pure."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from fedtl.server.registry import shared_address

if TYPE_CHECKING:
    from fedtl.server.settings.rounds import Schedule


def round_size(count: int, fraction: float, connected: int, min_fit: int) -> int:
    """`count` clients (0: all), or `fraction` of the connected ones; never below min_fit nor above connected."""
    if fraction > 0:
        wanted = math.ceil(fraction * connected)
    else:
        wanted = count or connected
    return min(connected, max(wanted, min_fit))


def with_over_selection(target: int, over_select: float, connected: int) -> int:
    """How many to ask so that `target` answers are likely even if some drop out."""
    return min(connected, target + math.ceil(target * over_select))


def select_clients(candidates: Iterable[str], count: int, rng: random.Random, addresses: Mapping[str, str] | None = None) -> list[str]:
    """Sample `count` names without replacement; sorted input makes it independent of join order. Where several
    candidates share a network address, spread over addresses: each takes its turn, one client a turn (in a seeded
    order), so one machine's swarm of sessions (sybils) gets no more of a round than any other address while others have
    clients left. Loopback and unknown addresses count each client as its own (a local federation samples as before)."""
    pool = sorted(set(candidates))
    if count >= len(pool):
        return pool
    groups: dict[str, list[str]] = {}
    for name in pool:
        address = (addresses or {}).get(name, "")
        groups.setdefault(address if shared_address(address) else name, []).append(name)
    if len(groups) == len(pool):
        return sorted(rng.sample(pool, count))
    turns = [rng.sample(members, len(members)) for members in rng.sample(list(groups.values()), len(groups))]
    picked: list[str] = []
    while len(picked) < count:  # a turn each, in the seeded order, until the round is full
        for members in turns:
            if members and len(picked) < count:
                picked.append(members.pop())
    return sorted(picked)


class Selector:
    """Who trains: each round's seeded sample of the connected clients, and spares asked in when a round falls short
    of its target (over-selection). The RNG is the run's and is checkpointed, so a resumed run selects as an
    uninterrupted one would."""

    def __init__(self, schedule: Schedule, rng: random.Random) -> None:
        self.schedule, self.rng = schedule, rng

    def open(self, connected: list[str], addresses: Mapping[str, str] | None = None) -> tuple[list[str], int]:
        """(the clients asked, the answers the round closes at)."""
        s = self.schedule
        target = round_size(s.clients_per_round, s.fraction, len(connected), s.min_fit_clients)
        return select_clients(connected, with_over_selection(target, s.over_select, len(connected)), self.rng, addresses), target

    def sample(self, connected: list[str], most: int, addresses: Mapping[str, str] | None = None) -> list[str]:
        """Every connected client when there are at most `most`, else a seeded sample of `most` (--statistics-clients)."""
        return sorted(connected) if len(connected) <= most else select_clients(connected, most, self.rng, addresses)

    def spares(self, short: int, connected: Iterable[str], selected: Iterable[str], addresses: Mapping[str, str] | None = None) -> list[str]:
        """Up to `short` connected clients not yet asked this round (none without --over-select)."""
        if not self.schedule.over_select or short <= 0:
            return []
        spare = sorted(set(connected) - set(selected))
        return select_clients(spare, short, self.rng, addresses) if spare else []
