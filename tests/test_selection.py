from __future__ import annotations

import random

from fedtl.server.selection import round_size, select_clients, with_over_selection


def test_selection_is_seeded_and_independent_of_join_order() -> None:
    names = [f"c{i}" for i in range(20)]
    a = select_clients(names, 5, random.Random(3))
    b = select_clients(list(reversed(names)), 5, random.Random(3))
    assert a == b and len(a) == 5 and a == sorted(a)
    assert select_clients(names, 5, random.Random(4)) != a


def test_selects_everyone_when_asked_for_more_than_connected() -> None:
    assert select_clients(["b", "a"], 5, random.Random(0)) == ["a", "b"]


def test_round_size_counts_fractions_and_bounds() -> None:
    assert round_size(0, 0.0, 7, 2) == 7  # all connected
    assert round_size(3, 0.0, 7, 2) == 3
    assert round_size(3, 0.0, 2, 2) == 2  # never above connected
    assert round_size(0, 0.25, 10, 1) == 3  # ceil(2.5)
    assert round_size(0, 0.1, 10, 4) == 4  # never below min_fit
    assert with_over_selection(4, 0.5, 10) == 6
    assert with_over_selection(4, 0.5, 5) == 5
