"""Who shares with whom (SecAgg+, Bell et al. 2020): a k-regular graph instead of everyone with everyone.

Participants are shuffled by a seed the round fixes, placed on a ring, and each is joined to the k/2 nearest
on either side (k = n - 1: the complete graph, plain SecAgg). Every client can compute the graph itself from
the participant list and the seed, so the coordinator cannot show one client a different graph unnoticed: both
are bound into the keys (crypto.context_of).
"""

from __future__ import annotations

import hashlib


def neighbours(participants: list[str], degree: int, seed: bytes) -> dict[str, list[str]]:
    names = sorted(participants, key=lambda n: hashlib.sha256(seed + n.encode()).digest())
    n = len(names)
    if n < 2:
        return {name: [] for name in names}
    degree = min(degree, n - 1)
    half = degree // 2
    graph: dict[str, set[str]] = {name: set() for name in names}
    for i, name in enumerate(names):
        for step in range(1, half + 1):
            for other in (names[(i + step) % n], names[(i - step) % n]):
                if other != name:
                    graph[name].add(other)
        if degree % 2 and n % 2 == 0:  # odd degree on an even ring: add the opposite node
            graph[name].add(names[(i + n // 2) % n])
    return {name: sorted(others) for name, others in graph.items()}


def effective_degree(participants: int, requested: int) -> int:
    """The degree `neighbours` gives every node: `requested` (0: complete) capped at n - 1, and even when n is odd."""
    degree = participants - 1 if requested <= 0 else min(requested, participants - 1)
    return degree - 1 if degree % 2 and participants % 2 else degree
