"""Deterministic fault injection for the fault-tolerance tests (tests/test_faults.py).

`FEDTL_FAULT=point[:n][:stop]` makes this process SIGKILL itself (no cleanup, like a power cut) the
n-th time (default 1st) it reaches `point`: "download" (mid-stream), "train" (after a batch) or
"upload" (mid-stream). With `:stop` it SIGSTOPs itself instead (a frozen machine) until the test
sends SIGCONT, which makes "this client is late" an ordering the test controls, not a race.
Unset, `hit` is one dictionary lookup.
"""

from __future__ import annotations

import collections
import os
import signal

_seen: collections.Counter[str] = collections.Counter()


def hit(point: str) -> None:
    spec = os.environ.get("FEDTL_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth, _, action = rest.partition(":")
    _seen[point] += 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
