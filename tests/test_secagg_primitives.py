"""Secure aggregation's primitives: Shamir sharing, key agreement, sealing, masks, fixed point, the neighbour graph and
the parameter checks. Property tests where the claim is "for every input"."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.common.secagg import crypto, fixedpoint, shamir
from fedtl.common.secagg.graph import effective_degree, neighbours
from fedtl.common.secagg.params import default_threshold, problem

SECRETS = st.integers(min_value=0, max_value=(1 << 256) - 1)


@st.composite
def sharings(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(2, 12))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    return draw(SECRETS), xs, t


@settings(max_examples=60, deadline=None)
@given(sharings(), st.randoms(use_true_random=False))
def test_any_t_shares_rebuild_the_secret(sharing, rnd) -> None:  # type: ignore[no-untyped-def]
    secret, xs, t = sharing
    shares = shamir.split(secret, xs, t)
    subset = rnd.sample(sorted(shares), t)
    assert shamir.combine({x: shares[x] for x in subset}) == secret
    assert shamir.combine(shares) == secret  # more than t of the same polynomial too


@settings(max_examples=60, deadline=None)
@given(sharings(), SECRETS)
def test_fewer_than_t_shares_fit_every_secret_equally(sharing, other: int) -> None:  # type: ignore[no-untyped-def]
    """t - 1 shares say nothing: for any other secret there is exactly one t-th share that completes them to it."""
    secret, xs, t = sharing
    if t < 2:
        return
    shares = shamir.split(secret, xs, t)
    known = {x: shares[x] for x in xs[: t - 1]}
    fresh = max(xs) + 1
    completion = shamir._interpolate({0: other, **known}, fresh)
    assert shamir.combine({**known, fresh: completion}) == other


@settings(max_examples=40, deadline=None)
@given(sharings(), st.integers(1, shamir.P - 1))
def test_a_corrupted_share_is_detected_and_named(sharing, delta: int) -> None:  # type: ignore[no-untyped-def]
    secret, xs, t = sharing
    shares = shamir.split(secret, xs, t)
    bad = xs[0]
    shares[bad] = (shares[bad] + delta) % shamir.P
    found = shamir.combine_checked(shares, t, lambda s: s == secret)
    if len(xs) > t:  # a spare share: the secret is still rebuilt, and the liar is named
        assert found is not None and found[0] == secret
        assert shamir.off_polynomial(shares, found[1]) == [bad]
    else:  # exactly t: nothing that passes the check, so the caller fails closed
        assert found is None


def test_shares_serialise_to_fixed_width_and_refuse_out_of_field() -> None:
    assert shamir.from_bytes(shamir.to_bytes(shamir.P - 1)) == shamir.P - 1
    with pytest.raises(ValueError):
        shamir.from_bytes(shamir.P.to_bytes(shamir.SHARE_BYTES, "big"))
    with pytest.raises(ValueError):
        shamir.from_bytes(b"\1" * 10)
    with pytest.raises(ValueError):
        shamir.split(1, [1, 2], 3)


def test_key_agreement_is_symmetric_and_bound_to_its_context() -> None:
    (a, a_pub), (b, b_pub) = crypto.keypair(), crypto.keypair()
    ctx = crypto.context_of(3, 1, "model-digest", ["a", "b", "c"])
    assert crypto.agree(a, b_pub, b"mask", ctx) == crypto.agree(b, a_pub, b"mask", ctx)
    assert crypto.agree(a, b_pub, b"mask", ctx) != crypto.agree(a, b_pub, b"share", ctx)
    for other in (crypto.context_of(3, 1, "other-model", ["a", "b", "c"]), crypto.context_of(3, 1, "model-digest", ["a", "b"]),
                  crypto.context_of(4, 1, "model-digest", ["a", "b", "c"]), crypto.context_of(3, 2, "model-digest", ["a", "b", "c"])):
        assert crypto.agree(a, b_pub, b"mask", other) != crypto.agree(a, b_pub, b"mask", ctx)
    assert crypto.context_of(1, 1, "d", ["b", "a"]) == crypto.context_of(1, 1, "d", ["a", "b"])  # order does not matter
    assert crypto.public_of(a) == a_pub


def test_sealed_shares_open_only_unchanged_and_in_their_context() -> None:
    key = crypto.agree(*_pair(), b"share", b"ctx")
    sealed = crypto.seal(key, b"secret share", b"aad")
    assert crypto.open_sealed(key, sealed, b"aad") == b"secret share"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad_key, blob, aad in ((key, tampered, b"aad"), (key, sealed, b"other aad"), (bytes(32), sealed, b"aad")):
        with pytest.raises(InvalidTag):
            crypto.open_sealed(bad_key, blob, aad)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 700))
def test_masks_stream_the_same_keystream_in_any_chunking_and_cancel(count: int, chunk: int) -> None:
    seed = bytes(range(32))
    whole = crypto.mask(seed, count)
    old = crypto.MASK_CHUNK
    crypto.MASK_CHUNK = chunk
    try:
        pieces = np.zeros(count, dtype=np.uint64)
        crypto.add_mask(pieces, seed, +1)
        assert np.array_equal(pieces, whole)
        crypto.add_mask(pieces, seed, -1)
        assert not pieces.any()  # adding and subtracting the same mask wraps back to zero
    finally:
        crypto.MASK_CHUNK = old
    assert not np.array_equal(crypto.mask(bytes(32), count), whole) or count == 0


def test_int8_values_of_uniformly_weighted_clients_sum_exactly_in_16_bit_words() -> None:
    """--upload-codec int8 under secure aggregation: 8-bit values, and words just wide enough for the sum (half of float32)."""
    assert fixedpoint.modulus_bits(257, 1, 8) == 16 and fixedpoint.modulus_bits(258, 1, 8) == 32
    assert fixedpoint.modulus_bits(4, 1 << 16, 8) == 32 and fixedpoint.modulus_bits(4, 1 << 16, 24) == 64
    rng = np.random.default_rng(5)
    updates = [rng.normal(size=3000) * 0.05 for _ in range(5)]
    seeds = [bytes([i]) * 32 for i in range(5)]
    masked = []
    for i, update in enumerate(updates):
        words, _ = fixedpoint.encode(update, 1, 5.0, 8, rng, {}, word_bits=16)
        assert words.dtype == np.uint16 and words.nbytes == 2 * fixedpoint.length(3000)
        crypto.add_mask(words, seeds[i], +1)  # pairwise-style: each mask is removed below, as unmasking does
        masked.append(words)
    total = np.zeros_like(masked[0])
    for words in masked:
        np.add(total, words, out=total)  # wraps modulo 2^16
    for seed in seeds:
        crypto.add_mask(total, seed, -1)
    decoded = fixedpoint.decode(total, 5, 5.0, 8, 1)
    assert decoded.weight == 5
    assert np.abs(decoded.update - np.mean(updates, axis=0)).max() <= 2 * 5.0 / 255  # within one 8-bit level


def test_masks_need_a_full_seed_and_uint64() -> None:
    with pytest.raises(ValueError):
        crypto.mask(b"short", 4)
    with pytest.raises(TypeError):
        crypto.add_mask(np.zeros(4, dtype=np.int64), bytes(32), +1)


def test_fixed_point_round_trip_is_within_one_level_and_weighted() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=1000) * 0.1, rng.normal(size=1000) * 0.1
    clip, bits = 10.0, 20
    ea, _ = fixedpoint.encode(a, 3, clip, bits, rng, {"train_loss": 2.0, "train_accuracy": 0.25})
    eb, _ = fixedpoint.encode(b, 1, clip, bits, rng, {"train_loss": 1.0, "train_accuracy": 0.75})
    decoded = fixedpoint.decode(ea + eb, 2, clip, bits, 10)
    level = 2 * clip / (2**bits - 1)
    assert decoded.weight == 4 and decoded.clipped == 0
    assert np.abs(decoded.update - (3 * a + b) / 4).max() <= level
    assert decoded.stats["train_loss"] == pytest.approx(1.75, abs=1e-4)
    assert decoded.stats["train_accuracy"] == pytest.approx(0.375, abs=1e-5)


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(2)
    rounded = fixedpoint._round(np.full(400_000, 5.3), rng)
    assert set(np.unique(rounded)) == {5, 6}
    assert rounded.mean() == pytest.approx(5.3, abs=0.005)  # nearest rounding would give 5.0: a bias of 0.3 levels


def test_clipping_is_counted_not_silent() -> None:
    rng = np.random.default_rng(3)
    big = np.ones(100)  # norm 10
    encoded, clipped = fixedpoint.encode(big, 1, 1.0, 16, rng, {})
    assert clipped
    decoded = fixedpoint.decode(encoded, 1, 1.0, 16, 1)
    assert decoded.clipped == 1 and np.linalg.norm(decoded.update) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError):
        fixedpoint.encode(np.array([np.nan]), 1, 1.0, 16, rng, {})


def test_decode_refuses_sums_no_valid_inputs_give() -> None:
    rng = np.random.default_rng(4)
    encoded, _ = fixedpoint.encode(np.zeros(10), 5, 1.0, 8, rng, {})
    for corrupt in (lambda v: v.__setitem__(3, np.uint64(1) << np.uint64(40)),  # a coordinate beyond weight x levels
                    lambda v: v.__setitem__(-1, np.uint64(99)),  # a weight above max_weight
                    lambda v: v.__setitem__(-2, np.uint64(2))):  # more clipped than clients
        bad = encoded.copy()
        corrupt(bad)
        with pytest.raises(ValueError):
            fixedpoint.decode(bad, 1, 1.0, 8, 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(1e-4, 5e3)), min_size=1, max_size=6))
def test_the_largest_record_epsilon_survives_the_masked_sum_within_five_percent(spent: list) -> None:
    """Each client's ε rides as a thermometer; the sum gives an upper bound on the largest, never below it."""
    rng = np.random.default_rng(5)
    total = sum(fixedpoint.encode(np.zeros(4), 1, 1.0, 8, rng, {} if e is None else {"epsilon": e})[0] for e in spent)
    largest = fixedpoint.decode(total, len(spent), 1.0, 8, 1).record_epsilon
    reported = [e for e in spent if e is not None]
    if not reported:
        assert math.isnan(largest)
    elif max(reported) > fixedpoint.EPSILON_EDGES[-1]:
        assert largest == math.inf
    else:
        assert max(reported) <= largest <= max(max(reported) * 1.05, 0.01) + 1e-12


def test_epsilon_counts_no_clients_could_send_are_refused() -> None:
    rng = np.random.default_rng(6)
    encoded, _ = fixedpoint.encode(np.zeros(4), 1, 1.0, 8, rng, {"epsilon": 3.0})
    start = 4 + len(fixedpoint.STATS)
    for corrupt in (lambda v: v.__setitem__(start + 200, np.uint64(1)),  # above a higher edge but not a lower one
                    lambda v: v.__setitem__(start, np.uint64(2))):  # two clients' worth from one
        bad = encoded.copy()
        corrupt(bad)
        with pytest.raises(ValueError, match="ε counts"):
            fixedpoint.decode(bad, 1, 1.0, 8, 1)


def test_capacity_is_computed_against_the_modulus() -> None:
    assert fixedpoint.capacity_bits(1000, 1 << 16, 24) == 50
    assert problem(8, 7, 5, 24, 1 << 16) == ""
    assert "modulus" in problem(1 << 20, 7, 5, 32, 1 << 16)


@pytest.mark.parametrize("n, requested", [(8, 0), (7, 0), (10, 4), (11, 4), (12, 5), (9, 3), (3, 0), (20, 6)])
def test_the_neighbour_graph_is_regular_symmetric_and_fixed_by_its_seed(n: int, requested: int) -> None:
    names = [f"client-{i}" for i in range(n)]
    graph = neighbours(names, requested or n - 1, b"seed")
    degree = effective_degree(n, requested)
    assert all(len(others) == degree and name not in others for name, others in graph.items())
    assert all(name in graph[other] for name, others in graph.items() for other in others)
    assert neighbours(list(reversed(names)), requested or n - 1, b"seed") == graph
    if requested and degree < n - 1:
        assert neighbours(names, requested, b"other seed") != graph


def test_parameters_that_would_not_protect_a_client_are_refused() -> None:
    assert default_threshold(7) == 6 and default_threshold(2) == 2 and default_threshold(3) == 3
    assert all(problem(n, effective_degree(n, 0), default_threshold(effective_degree(n, 0)), 24, 1 << 16) == "" for n in range(3, 200))
    assert "at least 3" in problem(2, 1, 1, 24, 1)
    assert "not more than half" in problem(8, 7, 4, 24, 1)  # 2t <= k + 1: two halves could each reveal one kind
    assert "no secret could be rebuilt" in problem(8, 7, 8, 24, 1)
    assert "bits" in problem(8, 7, 5, 0, 1)


def test_secrets_are_within_the_field() -> None:
    assert math.log2(shamir.P) > 256  # any 32-byte key or seed is one field element


def _pair() -> tuple[bytes, bytes]:
    (a, _), (_, b_pub) = crypto.keypair(), crypto.keypair()
    return a, b_pub
