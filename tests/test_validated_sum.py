"""Two-server validated aggregation's core (common/validated_sum): field arithmetic and polynomial evaluation against
Python integers, honest inputs accepted and summed exactly, and every cheat refused: a coordinate out of range, a
vector at the range's edge (its L2 norm far past the bound) with any forged slack, a forged proof, a share of another
client's input, any tampered share, wrong lengths. What each server sees alone is uniform."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.common.validated_sum import field, poly, proof
from fedtl.common.validated_sum.proof import Challenge, LeaderShare, Party, Shape

elements = st.integers(0, field.P - 1)
SHAPE = Shape(300, 8, proof.norm_bound(8, 300))
LEVELS = (1 << SHAPE.bits) - 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(elements, elements), min_size=1, max_size=40))
def test_field_arithmetic_matches_python_integers(pairs: list[tuple[int, int]]) -> None:
    a = np.array([x for x, _ in pairs], dtype=np.uint64)
    b = np.array([y for _, y in pairs], dtype=np.uint64)
    assert [int(v) for v in field.mul(a, b)] == [x * y % field.P for x, y in pairs]
    assert [int(v) for v in field.add(a, b)] == [(x + y) % field.P for x, y in pairs]
    assert [int(v) for v in field.sub(a, b)] == [(x - y) % field.P for x, y in pairs]
    assert field.dot(a, b) == sum(x * y for x, y in pairs) % field.P


@settings(max_examples=50, deadline=None)
@given(st.lists(elements, min_size=1, max_size=12), st.integers(0, field.P - 1))
def test_lagrange_coefficients_evaluate_the_polynomial_through_the_nodes(coefficients: list[int], x: int) -> None:
    def f(at: int) -> int:
        return sum(c * pow(at, k, field.P) for k, c in enumerate(coefficients)) % field.P

    nodes = len(coefficients)  # degree nodes - 1: the values at 0..nodes-1 fix it
    values = np.array([f(r) for r in range(nodes)], dtype=np.uint64)
    if x >= nodes:
        assert field.dot(poly.at(x, nodes), values) == f(x)
    beyond = poly.beyond(nodes, 3)
    assert [field.dot(beyond[i], values) for i in range(3)] == [f(nodes + i) for i in range(3)]
    small = np.arange(nodes * 2, dtype=np.int64).reshape(nodes, 2) - nodes  # the float64 path equals the general one
    assert np.array_equal(poly.extend(beyond, small), poly.extend(beyond, field.of_ints(small)))


def _encoded(norm: float, seed: int) -> np.ndarray:
    """An update of this L2 norm (clip 1) as b-bit fixed point with stochastic rounding, as fixedpoint.encode makes it."""
    rng = np.random.default_rng(seed)
    update = rng.normal(size=SHAPE.coordinates)
    update *= norm / np.linalg.norm(update)
    return np.floor((update + 1.0) / 2.0 * LEVELS + rng.random(SHAPE.coordinates)).astype(np.int64)


def _parties(leader: LeaderShare, helper_seed: bytes, shape: Shape = SHAPE) -> tuple[Party, Party]:
    return Party(shape, leader=leader), Party(shape, seed=helper_seed)


def _accepted(wires: np.ndarray, seed: bytes = b"\x07" * 32) -> bool:
    return proof.check(*_parties(*proof.share(wires, SHAPE)), Challenge.from_seed(seed, SHAPE))


def _wires(x: np.ndarray, slack: int) -> np.ndarray:
    """A cheater's wires: the bits it claims for x and for the slack, whatever they are."""
    bits = ((x[None, :] >> np.arange(SHAPE.bits)[:, None]) & 1).ravel()
    slack_bits = np.array([(slack >> k) & 1 for k in range(SHAPE.norm_bits)])
    return np.concatenate([bits, slack_bits, np.zeros(proof.NORM_LEVELS)]).astype(np.uint64)  # then the norm's bits


def test_honest_inputs_pass_and_their_weighted_sum_is_exact() -> None:
    inputs = [_encoded(norm, seed) for seed, norm in enumerate((1.0, 0.3, 0.99))]
    weights = [3, 1, 7]  # public: the servers apply them to the shares
    leader_sum, helper_sum = np.zeros(SHAPE.coordinates, dtype=np.uint64), np.zeros(SHAPE.coordinates, dtype=np.uint64)
    above = np.zeros(proof.NORM_LEVELS, dtype=np.int64)
    for i, (x, w) in enumerate(zip(inputs, weights, strict=True)):
        leader, helper = _parties(*proof.share(proof.wires_of(x, SHAPE, proof.norm_bits([2.0, 0.3, 0.99][i], 1.0)), SHAPE))
        assert proof.check(leader, helper, Challenge.from_seed(bytes(32), SHAPE))
        leader_sum = field.add(leader_sum, field.mul(leader.input_share(), field.element(w)))
        helper_sum = field.add(helper_sum, field.mul(helper.input_share(), field.element(w)))
        above += field.add(leader.norm_share(), helper.norm_share()).astype(np.int64)
    total = field.add(leader_sum, helper_sum).astype(np.int64)
    assert np.array_equal(total, sum(w * x for x, w in zip(inputs, weights, strict=True)))
    assert above[0] == 1 and above[1] == above[5] == 2 and above[6] == 3  # 2.0 clipped; 0.99 > 1/1.25; 0.3 > 1/1.25^6


def test_what_each_server_holds_alone_looks_uniform() -> None:
    leader_share, helper_seed = proof.share(proof.wires_of(_encoded(1.0, 5), SHAPE), SHAPE)
    leader, helper = _parties(leader_share, helper_seed)
    for wires in (leader.wires, helper.wires):  # the wires are 0/1; a share of them must not be
        assert np.unique(wires).size == wires.size and wires.mean() / field.P == pytest.approx(0.5, abs=0.06)


def test_a_coordinate_out_of_range_is_refused() -> None:
    x = _encoded(0.5, 1)
    wires = _wires(x, SHAPE.bound - int(np.dot(2 * x - LEVELS, 2 * x - LEVELS)))
    assert _accepted(wires)
    wires[7] = 2  # bit 0 of coordinate 7 is 2: x_7 can reach past 2^b - 1
    assert not _accepted(wires)
    wires[7], wires[-1] = 0, 2  # a norm "bit" of 2 would count two clients
    assert not _accepted(wires)


def test_a_vector_at_the_range_edge_is_refused_however_its_slack_is_forged() -> None:
    """Every coordinate at the edge: each one in range, the L2 norm sqrt(d) times the clip (the attack that broke
    masked sums). Its slack would be negative: forged as the field's wrap-around, or as any bits, it fails."""
    edge = np.full(SHAPE.coordinates, LEVELS, dtype=np.int64)
    with pytest.raises(ValueError, match="exceeds the bound"):
        proof.wires_of(edge, SHAPE)
    norm2 = int(np.dot(2 * edge - LEVELS, 2 * edge - LEVELS))
    for slack in ((SHAPE.bound - norm2) % field.P, 0, (1 << SHAPE.norm_bits) - 1):
        assert not _accepted(_wires(edge, slack))


@pytest.mark.parametrize("part", ["blind", "p at a row", "p beyond", "q at a row", "q beyond"])
def test_a_forged_proof_is_refused(part: str) -> None:
    leader, helper_seed = proof.share(proof.wires_of(_encoded(0.8, 2), SHAPE), SHAPE)
    m, m2 = SHAPE.side, SHAPE.norm_side
    index = {"blind": 0, "p at a row": m + m2 + 3, "p beyond": 3 * m + m2, "q at a row": 3 * m + m2 + 3, "q beyond": -1}[part]
    forged = leader.proof.copy()
    forged[index] = field.add(forged[index], field.element(1))
    assert not proof.check(*_parties(LeaderShare(leader.wires, forged), helper_seed), Challenge.from_seed(b"\x03" * 32, SHAPE))


def test_a_share_of_another_clients_input_is_refused() -> None:
    first, _ = proof.share(proof.wires_of(_encoded(0.5, 3), SHAPE), SHAPE)
    _, second_seed = proof.share(proof.wires_of(_encoded(0.5, 4), SHAPE), SHAPE)
    assert not proof.check(*_parties(first, second_seed), Challenge.from_seed(b"\x09" * 32, SHAPE))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, SHAPE.wires - 1), st.integers(1, field.P - 1), st.binary(min_size=32, max_size=32))
def test_any_change_to_a_share_is_caught(index: int, delta: int, challenge: bytes) -> None:
    leader, helper_seed = proof.share(proof.wires_of(_encoded(0.9, 6), SHAPE), SHAPE)
    wires = leader.wires.copy()
    wires[index] = field.add(wires[index], field.element(delta))
    tampered = LeaderShare(wires, leader.proof)
    assert not proof.check(*_parties(tampered, helper_seed), Challenge.from_seed(challenge, SHAPE))


def test_malformed_shares_are_refused_before_any_check() -> None:
    leader, helper_seed = proof.share(proof.wires_of(_encoded(0.5, 7), SHAPE), SHAPE)
    with pytest.raises(ValueError, match="wires share is"):
        Party(SHAPE, leader=LeaderShare(leader.wires[:-1], leader.proof))
    with pytest.raises(ValueError, match="proof share is"):
        Party(SHAPE, leader=LeaderShare(leader.wires, leader.proof.astype(np.int64)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the field"):
        Party(SHAPE, leader=LeaderShare(np.full(SHAPE.wires, field.P, dtype=np.uint64), leader.proof))
    with pytest.raises(ValueError, match="32-byte seed"):
        Party(SHAPE, seed=helper_seed[:16])
    party = Party(SHAPE, seed=helper_seed)
    with pytest.raises(ValueError, match="an opening is"):
        proof.valid(SHAPE, party.binding(), party.binding(), np.zeros(5, dtype=np.uint64), np.zeros(5, dtype=np.uint64))
    with pytest.raises(ValueError, match="wrap"):
        Shape(1 << 30, 16, 1)
