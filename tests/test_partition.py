"""Partitions are deterministic, disjoint and covering; non-IID schemes are measurably skewed."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from fedtl.common.errors import ConfigError
from fedtl.common.partition import holdout_split, label_skew_score, partition


def _labels(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


@settings(max_examples=60, deadline=None)
@given(st.integers(20, 400), st.integers(1, 8), st.sampled_from(["iid", "dirichlet", "label-skew"]), st.integers(0, 1000))
def test_disjoint_covering_and_deterministic(n: int, k: int, scheme: str, seed: int) -> None:
    labels = _labels(n, 10, seed)
    present = len(np.unique(labels))
    kwargs = {"alpha": 1.0, "classes_per_client": present if k * 2 < present else 2}
    parts = partition(labels, k, scheme, seed, **kwargs)
    assert len(parts) == k
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))  # covering, and disjoint (no repeats)
    again = partition(labels, k, scheme, seed, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_iid_matches_the_reference_recipe() -> None:
    """Issue 9's reference split: default_rng(0).permutation(5000) cut into 4 contiguous parts."""
    parts = partition(np.zeros(5000, dtype=int), 4, "iid", seed=0)
    expected = np.array_split(np.random.default_rng(0).permutation(5000), 4)
    assert all(np.array_equal(p, np.sort(e)) for p, e in zip(parts, expected))


def test_different_seeds_give_different_splits() -> None:
    labels = _labels(500)
    a, b = partition(labels, 4, "iid", 1), partition(labels, 4, "iid", 2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = _labels(5000)
    iid = label_skew_score(labels, partition(labels, 8, "iid", 0))
    mild = label_skew_score(labels, partition(labels, 8, "dirichlet", 0, alpha=10.0))
    strong = label_skew_score(labels, partition(labels, 8, "dirichlet", 0, alpha=0.1))
    assert iid < 0.05
    assert iid < mild < strong
    assert strong > 0.4


def test_label_skew_gives_each_client_its_classes_only() -> None:
    labels = _labels(2000)
    parts = partition(labels, 5, "label-skew", 3, classes_per_client=2)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    with pytest.raises(ConfigError, match="cannot cover"):
        partition(labels, 3, "label-skew", 0, classes_per_client=2)


def test_bad_arguments_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="partition-scheme"):
        partition(_labels(10), 2, "random")
    with pytest.raises(ConfigError, match="alpha"):
        partition(_labels(10), 2, "dirichlet", alpha=0)
    with pytest.raises(ConfigError):
        partition(_labels(3), 5, "iid")


def test_holdout_split_is_deterministic_and_disjoint() -> None:
    indices = np.arange(100, 200)
    train, held = holdout_split(indices, 0.2, seed=4)
    assert len(held) == 20 and len(train) == 80
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(indices)
    assert np.array_equal(held, holdout_split(indices, 0.2, seed=4)[1])
    assert len(holdout_split(indices, 0.0, 0)[1]) == 0
