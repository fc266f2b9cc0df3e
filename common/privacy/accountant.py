"""Privacy ledgers and their ε, computed by dp-accounting (Google's accountants: RDP or PLD) — never by hand.

A ledger is the list of Gaussian mechanisms a party's data went through, each with the sampling that chose the data
it saw: Poisson (each record, or each client, in with probability q), a fixed-size sample without replacement (the
coordinator's client selection), or everything (no amplification). Ledgers are plain JSON, so a client keeps its
own in its work directory and the coordinator keeps the federation's in its checkpoint; both survive restarts.

Noise multipliers here are σ / (the clip norm). Under "replace one" (sampling without replacement: the population
size is public) one record's change moves a clipped sum by up to twice the clip, so such steps are accounted with
half the multiplier, as dp-accounting defines it (σ over the l2 sensitivity).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dp_accounting
from dp_accounting import pld, rdp

METHODS = ("rdp", "pld")
# Integer RDP orders only: there both dp-accounting and Opacus evaluate the subsampled Gaussian in closed form, so the
# same ledger gives the same ε in either (to 1e-12). Fractional orders are computed by series that the two truncate
# differently (1e-4 apart) and that fail to converge at large sampling rates; without them ε is at most a few percent
# larger (conservative). --dp-accountant pld is the tight one.
ORDERS = list(range(2, 64)) + [80, 96, 128, 192, 256]
POISSON, WITHOUT_REPLACEMENT, EVERYONE = "poisson", "without_replacement", "everyone"


@dataclass(frozen=True)
class Steps:
    """`count` applications of a Gaussian mechanism with noise multiplier `noise`, to data chosen by `sampling`."""

    sampling: str
    noise: float
    count: int = 1
    rate: float = 1.0  # poisson: the probability each record (client) is in
    population: int = 0  # without_replacement: chosen `sample` of `population`
    sample: int = 0

    def event(self, replace_one: bool = False) -> dp_accounting.DpEvent:
        gaussian = dp_accounting.GaussianDpEvent(self.noise / 2 if replace_one else self.noise)
        if self.sampling == POISSON:
            one = dp_accounting.PoissonSampledDpEvent(self.rate, gaussian)
        elif self.sampling == WITHOUT_REPLACEMENT:
            one = dp_accounting.SampledWithoutReplacementDpEvent(self.population, self.sample, gaussian)
        elif self.sampling == EVERYONE:
            one = gaussian
        else:
            raise ValueError(f"unknown sampling {self.sampling!r}")
        return dp_accounting.SelfComposedDpEvent(one, self.count)


def epsilon(steps: Iterable[Steps], delta: float, method: str = "rdp") -> float:
    """ε at `delta` after all the steps (0 before any)."""
    steps = [s for s in steps if s.count > 0]
    if not steps:
        return 0.0
    if any(s.noise <= 0 for s in steps):
        return math.inf
    kinds = {s.sampling for s in steps}
    if {POISSON, WITHOUT_REPLACEMENT} <= kinds:
        raise ValueError("a ledger mixes Poisson sampling and sampling without replacement: no accountant composes both")
    replace_one = WITHOUT_REPLACEMENT in kinds  # then every step is accounted under "replace one" (half the multiplier)
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE if replace_one else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if method == "rdp":
        accountant = rdp.RdpAccountant(ORDERS, neighboring_relation=relation)
    elif method == "pld":
        if replace_one:
            raise ValueError("the PLD accountant has no sampling without replacement: use --dp-accountant rdp")
        accountant = pld.PLDAccountant(relation)
    else:
        raise ValueError(f"accountant {method!r}: use rdp or pld")
    accountant.compose(dp_accounting.ComposedDpEvent([s.event(replace_one) for s in _grouped(steps)]))
    return float(accountant.get_epsilon(delta))


def _grouped(steps: list[Steps]) -> list[Steps]:
    """Equal mechanisms merged into one with their counts summed: a long ledger is usually one step repeated, and each
    distinct step costs the accountant one (for sampling without replacement, slow) evaluation, however many times it ran."""
    counts: dict[Steps, int] = {}
    for s in steps:
        key = dataclasses.replace(s, count=1)
        counts[key] = counts.get(key, 0) + s.count
    return [dataclasses.replace(key, count=count) for key, count in counts.items()]


def calibrate(target: float, delta: float, steps_at: Callable[[float], list[Steps]], method: str = "rdp") -> float:
    """The smallest noise multiplier (to 0.1 %) whose steps stay within ε = `target` at `delta`."""
    low, high = 0.05, 1.0
    while epsilon(steps_at(high), delta, method) > target:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches ε = {target} at δ = {delta}")
    while (high - low) / high > 1e-3:
        middle = (low + high) / 2
        if epsilon(steps_at(middle), delta, method) > target:
            low = middle
        else:
            high = middle
    return high


def to_json(steps: Iterable[Steps]) -> list[dict]:
    return [dataclasses.asdict(s) for s in steps]


def from_json(data: list[dict]) -> list[Steps]:
    return [Steps(**item) for item in data]


def dumps(steps: Iterable[Steps]) -> str:
    return json.dumps(to_json(steps))

