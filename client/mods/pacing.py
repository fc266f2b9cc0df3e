"""A simulated slow link (--simulate-link UP/DOWN): every connection's transfers are paced to the site's uplink and
downlink rates (common/link.py's token buckets), so benchmarks measure time to accuracy as a real site would see it."""

from __future__ import annotations

import argparse

from fedtl.client.mods.base import ClientMod
from fedtl.common.errors import ConfigError
from fedtl.common.link import TokenBucket, parse_link
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--simulate-link", default=None, metavar="UP/DOWN",
                   help="pace this client's uploads and downloads to UP and DOWN Mbit/s (a token bucket; e.g. 10/50): what a "
                   "slow site would see, for benchmarks and planning")


SECTION = Section("link", "simulated link", add_flags)


def link(a: argparse.Namespace) -> tuple[float, float] | None:
    """--simulate-link as (up, down) bit/s, or None."""
    try:
        return parse_link(a.simulate_link) if a.simulate_link else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class LinkPacingMod(ClientMod):
    def __init__(self, up_bits: float, down_bits: float) -> None:
        self.up_bits, self.down_bits = up_bits, down_bits

    def connected(self, io: object) -> None:
        pace = getattr(io, "pace", None)
        if pace is not None:
            pace(TokenBucket(self.up_bits), TokenBucket(self.down_bits))
