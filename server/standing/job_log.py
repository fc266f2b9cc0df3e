"""What `fedtl logs JOB` prints: the job's own lines (events.jsonl: submitted, offered, refused, ended) and its round
log (rounds.jsonl), merged by time. Both are JSON lines with `ts` and `message`; a line still being written waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

FOLLOW_POLL = 0.5  # seconds between looks at a followed job's log files


async def lines(sources: list[Path], ended: Callable[[], bool], follow: bool, stopping: asyncio.Event) -> AsyncIterator[str]:
    """Every complete line so far; following, the new ones too, until the job has ended (or the coordinator stops)."""
    offsets = [0] * len(sources)
    while True:
        over = ended()  # read before the files: what the job wrote before it ended is printed
        fresh: list[tuple[float, str]] = []
        for i, path in enumerate(sources):
            with contextlib.suppress(FileNotFoundError):
                with path.open("rb") as f:
                    f.seek(offsets[i])
                    data = f.read()
                complete = data[:data.rfind(b"\n") + 1]
                offsets[i] += len(complete)
                for line in complete.decode("utf-8", errors="replace").splitlines():
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        record = json.loads(line)
                        fresh.append((float(record["ts"]), str(record["message"])))
        for ts, message in sorted(fresh):
            yield f"{time.strftime('%H:%M:%S', time.localtime(ts))} {message}"
        if not follow or over:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), FOLLOW_POLL)
        if stopping.is_set():
            return
