"""The simulated slow link (--simulate-link): a token bucket that paces streams to a bit rate, on a fake clock."""

from __future__ import annotations

import pytest

from fedtl.common.link import TokenBucket, paced, parse_link


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@pytest.mark.parametrize("chunk", [1000, 64 * 1024, 4 << 20])
def test_a_stream_takes_its_bytes_over_the_rate_whatever_the_chunk_size(chunk: int) -> None:
    t = FakeTime()
    bucket = TokenBucket(10e6, burst_bytes=16 * 1024, clock=t.clock, sleep=t.sleep)
    total = 10_000_000
    sent = sum(len(m) for m in paced((b"x" * chunk for _ in range(total // chunk)), bucket))
    assert t.now == pytest.approx((sent - 16 * 1024) * 8 / 10e6, rel=1e-9)  # only the first burst is free


def test_idle_time_refills_only_up_to_the_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(8e6, burst_bytes=1000, clock=t.clock, sleep=t.sleep)
    t.now = 100.0  # a long idle spell
    bucket.take(1_001_000)
    assert t.now == pytest.approx(100.0 + 1.0)


def test_manifests_and_other_non_byte_messages_pass_free() -> None:
    t = FakeTime()
    bucket = TokenBucket(8.0, burst_bytes=0, clock=t.clock, sleep=t.sleep)
    assert list(paced(iter([object, None]), bucket)) == [object, None] and t.now == 0


def test_link_text_parses_or_says_what_to_write() -> None:
    assert parse_link("10/50") == (10e6, 50e6)
    for bad in ("10", "a/b", "0/50", "10/-1"):
        with pytest.raises(ValueError, match="--simulate-link"):
            parse_link(bad)
