"""A simulated slow link (--simulate-link UP/DOWN): every connection's transfers are paced to the site's uplink and
downlink rates (common/link.py's token buckets), so benchmarks measure time to accuracy as a real site would see it."""

from __future__ import annotations

from fedtl.client.mods.base import ClientMod
from fedtl.common.link import TokenBucket


class LinkPacingMod(ClientMod):
    def __init__(self, up_bits: float, down_bits: float) -> None:
        self.up_bits, self.down_bits = up_bits, down_bits

    def connected(self, io: object) -> None:
        pace = getattr(io, "pace", None)
        if pace is not None:
            pace(TokenBucket(self.up_bits), TokenBucket(self.down_bits))
