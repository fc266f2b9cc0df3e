"""The secure-aggregation protocol, coordinator and clients together without a network: clients drop out in every
phase, shares and inputs are corrupted, a dishonest coordinator shows clients different things. The aggregate is
either bit-exact with plain fixed-point FedAvg over the survivors, or the round fails closed."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from fedtl.client.secagg import Abort, SecureRound
from fedtl.common.errors import CorruptError, UpdateRejected
from fedtl.common.secagg import fixedpoint
from fedtl.common.secagg.graph import effective_degree
from fedtl.common.secagg.messages import SecAggMessage, SecAggSetup, SecAggStep
from fedtl.common.secagg.params import default_threshold
from fedtl.server.secagg import SecAggSettings
from fedtl.server.secagg.protocol import PHASES, SecAggRound
from fedtl.server.secagg.strategy import MaskedSum, SecureAggregation
from fedtl.server.strategies.base import RoundContext
from fedtl.server.strategies.stacked import AggregationError
from fedtl.server.validation import Update

ROUND, DIGEST, CLIP, BITS, MAX_WEIGHT = 4, "model-digest", 2.0, 16, 1000


class Simulation:
    """One secure round: the coordinator's state machine and n clients, phase by phase, as the run loop drives them."""

    def __init__(self, n: int = 8, threshold: int = 0, neighbours: int = 0, size: int = 300, digests: dict[str, str] | None = None) -> None:
        self.names = [f"c{i}" for i in range(n)]
        degree = effective_degree(n, neighbours)
        self.setup = SecAggSetup(tuple(self.names), threshold or default_threshold(degree), degree, b"graph-seed", BITS, CLIP, MAX_WEIGHT)
        self.server = SecAggRound(self.setup, ROUND, DIGEST)
        rng = np.random.default_rng(0)
        self.updates = {name: rng.normal(size=size) * 0.05 for name in self.names}
        self.weights = {name: int(rng.integers(1, MAX_WEIGHT)) for name in self.names}
        self.inputs: dict[str, np.ndarray] = {}
        self.clients: dict[str, SecureRound] = {}
        for name in self.names:
            encoded, _ = fixedpoint.encode(self.updates[name], self.weights[name], CLIP, BITS, rng, {"train_loss": 1.0})
            self.inputs[name] = encoded.copy()
            self.clients[name] = SecureRound(self.setup, ROUND, (digests or {}).get(name, DIGEST), name, "session", encoded)
        self.total = np.zeros(fixedpoint.length(size), dtype=np.uint64)
        self.answered: dict[str, list[str]] = {}
        self.aborted: dict[str, str] = {}
        self.held_before_unmask: list[np.ndarray] = []

    def run(self, drop: dict[str, set[str]] | None = None, edit: Callable[[str, str, object], object] | None = None) -> np.ndarray:
        """All phases; `drop[phase]` vanish before answering it; `edit(phase, client, answer)` may change an answer in
        transit. Returns the unmasked sum (or raises what the coordinator raises)."""
        drop, edit = drop or {}, edit or (lambda phase, client, answer: answer)
        expected = list(self.names)
        for phase in PHASES:
            if phase != PHASES[0]:
                self.server.opened(phase, expected)
            got = []
            for name in expected:
                if name in drop.get(phase, set()):
                    continue
                client = self.clients[name]
                try:
                    answer = client.start() if phase == PHASES[0] else client.handle(self.server.instruction(phase, name))
                except Abort as exc:
                    self.aborted[name] = str(exc)
                    continue
                answer = edit(phase, name, answer)
                if phase == "train":
                    self.held_before_unmask.append(answer.copy())
                    np.add(self.total, answer, out=self.total)
                else:
                    try:
                        self.server.receive(phase, name, answer)
                    except (CorruptError, UpdateRejected):
                        continue
                got.append(name)
            self.answered[phase] = got
            if len(got) < self.setup.threshold:
                raise AggregationError(f"{phase}: {len(got)} answers")
            expected = got
        self.held_before_unmask.append(self.total.copy())
        return self.server.unmask(self.total.copy())

    def plain_sum(self, clients: list[str]) -> np.ndarray:
        total = np.zeros_like(self.total)
        for name in clients:
            np.add(total, self.inputs[name], out=total)
        return total


def test_without_dropouts_the_unmasked_sum_is_exactly_the_sum_of_the_inputs() -> None:
    sim = Simulation()
    out = sim.run()
    assert np.array_equal(out, sim.plain_sum(sim.names))
    decoded = fixedpoint.decode(out, 8, CLIP, BITS, MAX_WEIGHT)
    assert decoded.weight == sum(sim.weights.values())
    plain = sum(sim.weights[n] * sim.updates[n] for n in sim.names) / decoded.weight
    assert np.abs(decoded.update - plain).max() <= 2 * CLIP / (2**BITS - 1)  # within one fixed-point level of FedAvg


@pytest.mark.parametrize("phase", PHASES)
def test_a_client_may_drop_in_any_phase(phase: str) -> None:
    sim = Simulation()
    out = sim.run(drop={phase: {"c3"}})
    survivors = sim.answered["train"]
    assert ("c3" in survivors) == (phase in ("check", "unmask"))  # an input that arrived counts, whoever leaves afterwards
    assert np.array_equal(out, sim.plain_sum(survivors))


def test_three_of_eight_killed_mid_protocol_leave_the_exact_sum_of_the_other_five() -> None:
    sim = Simulation(threshold=5)
    out = sim.run(drop={"share": {"c1"}, "train": {"c5"}, "check": {"c6"}})
    assert sim.answered["train"] == ["c0", "c2", "c3", "c4", "c6", "c7"] and len(sim.answered["unmask"]) == 5
    assert np.array_equal(out, sim.plain_sum(sim.answered["train"]))


def test_sparse_neighbour_graph_with_dropouts() -> None:
    sim = Simulation(n=16, neighbours=6)  # SecAgg+: each client shares with 6 of 15
    out = sim.run(drop={"train": {"c2"}, "unmask": {"c9"}})
    assert np.array_equal(out, sim.plain_sum(sim.answered["train"]))


def test_too_few_survivors_fail_closed() -> None:
    sim = Simulation()  # threshold 6 of 8
    with pytest.raises(AggregationError):
        sim.run(drop={"unmask": {"c1", "c2", "c3"}})


def test_the_coordinator_never_holds_both_secrets_of_one_client() -> None:
    sim = Simulation(threshold=5)
    sim.run(drop={"train": {"c2"}, "unmask": {"c4"}})
    assert sim.server.key_shares and sim.server.seed_shares
    assert not set(sim.server.key_shares) & set(sim.server.seed_shares)


def test_everything_the_coordinator_holds_before_unmasking_is_uniform() -> None:
    """The inputs are small integers; masked, every 64-bit word is uniform: chi-square of the residues mod 256 and of
    the top byte, for each masked input and for the sum, at a false-alarm rate of 1e-6 per check."""
    sim = Simulation(size=20_000)
    sim.run()
    assert len(sim.held_before_unmask) == 9
    limit = _chi_square_limit(255, z=4.75)
    for vector in sim.held_before_unmask:
        for residues in (vector & np.uint64(255), vector >> np.uint64(56)):
            counts = np.bincount(residues.astype(np.int64), minlength=256)
            expected = vector.size / 256
            assert ((counts - expected) ** 2 / expected).sum() < limit
    plain = np.bincount((sim.inputs["c0"] >> np.uint64(56)).astype(np.int64), minlength=256)
    assert ((plain - sim.inputs["c0"].size / 256) ** 2 / (sim.inputs["c0"].size / 256)).sum() > limit  # the check has teeth


def test_a_wrong_revealed_share_is_named_and_outvoted() -> None:
    sim = Simulation(threshold=5)

    def lie(phase: str, client: str, answer: object) -> object:
        if phase == "unmask" and client == "c7":
            assert isinstance(answer, SecAggMessage)
            seeds = {owner: bytes(66 - 1) + b"\x01" for owner in answer.seed_shares}
            return SecAggMessage(answer.session_id, answer.round, answer.phase, seed_shares=seeds, key_shares=answer.key_shares)
        return answer

    out = sim.run(edit=lie)
    assert np.array_equal(out, sim.plain_sum(sim.names))
    assert sim.server.wrong_shares == {"c7"}


def test_wrong_shares_with_no_spare_fail_closed() -> None:
    sim = Simulation(threshold=5)

    def lie(phase: str, client: str, answer: object) -> object:
        if phase == "unmask" and client == "c0":
            assert isinstance(answer, SecAggMessage)
            return SecAggMessage(answer.session_id, answer.round, answer.phase, seed_shares={o: bytes(65) + b"\x02" for o in answer.seed_shares},
                                 key_shares=answer.key_shares)
        return answer

    with pytest.raises(AggregationError, match="rebuild what it committed to"):
        sim.run(drop={"unmask": {"c1", "c2", "c3"}}, edit=lie)


def test_a_corrupted_masked_input_fails_closed_never_a_wrong_model() -> None:
    sim = Simulation()

    def flip(phase: str, client: str, answer: object) -> object:
        if phase == "train" and client == "c5":
            assert isinstance(answer, np.ndarray)
            answer = answer.copy()
            answer[17] ^= np.uint64(1) << np.uint64(50)
        return answer

    out = sim.run(edit=flip)
    with pytest.raises(ValueError, match="exceeds"):
        fixedpoint.decode(out, 8, CLIP, BITS, MAX_WEIGHT)


def test_a_coordinator_showing_one_client_another_model_is_caught() -> None:
    """The model digest is bound into every derived key: shares to and from the client with the other model do not open."""
    sim = Simulation(digests={"c2": "another-model"})
    with pytest.raises(AggregationError):
        sim.run()
    assert "c2" in sim.aborted or any("c2" in reason for reason in sim.aborted.values())
    assert "different models" in next(iter(sim.aborted.values()))


def test_a_coordinator_changing_the_survivor_list_is_caught() -> None:
    sim = Simulation(threshold=5)
    real_step = sim.server.step

    def lying_step(phase: str, client: str) -> SecAggStep:
        step = real_step(phase, client)
        if phase == "unmask" and client == "c0":  # tell c0 that c1 dropped, to get c1's key share from it too
            survivors = tuple(n for n in step.survivors if n != "c1")
            return SecAggStep(step.round, step.phase, survivors=survivors, dropped=("c1",), tags=step.tags)
        return step

    sim.server.step = lying_step  # type: ignore[method-assign]
    sim.run()
    assert "changed the survivor list" in sim.aborted["c0"]
    assert "c1" not in sim.server.key_shares


def test_tags_from_neighbours_who_saw_other_survivors_do_not_verify() -> None:
    sim = Simulation(threshold=5)
    real_step = sim.server.step

    def split_view(phase: str, client: str) -> SecAggStep:
        step = real_step(phase, client)
        if phase == "check" and client in ("c4", "c5", "c6", "c7"):
            return SecAggStep(step.round, step.phase, survivors=tuple(n for n in step.survivors if n != "c3"))
        return step

    sim.server.step = split_view  # type: ignore[method-assign]
    with pytest.raises(AggregationError):
        sim.run()
    assert any("different survivor list" in reason for reason in sim.aborted.values())


def test_clients_refuse_unsafe_parameters_and_out_of_order_steps() -> None:
    names = tuple(f"c{i}" for i in range(8))
    with pytest.raises(Abort, match="not more than half"):
        SecureRound(SecAggSetup(names, 4, 7, b"s", BITS, CLIP, MAX_WEIGHT), ROUND, DIGEST, "c0", "s", np.zeros(3, dtype=np.uint64))
    with pytest.raises(Abort, match="does not name this client"):
        SecureRound(SecAggSetup(names, 6, 7, b"s", BITS, CLIP, MAX_WEIGHT), ROUND, DIGEST, "zz", "s", np.zeros(3, dtype=np.uint64))
    client = SecureRound(SecAggSetup(names, 6, 7, b"s", BITS, CLIP, MAX_WEIGHT), ROUND, DIGEST, "c0", "s", np.zeros(3, dtype=np.uint64))
    with pytest.raises(Abort, match="out of order"):
        client.handle(SecAggStep(ROUND, "unmask"))


def test_the_coordinator_refuses_malformed_answers() -> None:
    sim = Simulation()
    keys = sim.clients["c0"].start().keys
    with pytest.raises(CorruptError):
        sim.server.receive("advertise", "c1", sim.clients["c0"].start())  # someone else's keys
    sim.server.receive("advertise", "c0", SecAggMessage("s", ROUND, "advertise", keys=keys))
    assert keys is not None
    from fedtl.common.secagg.messages import PublicKeys

    with pytest.raises(CorruptError, match="already in use"):  # a replayed public key
        sim.server.receive("advertise", "c1", SecAggMessage("s", ROUND, "advertise", keys=PublicKeys("c1", keys.encryption_key, b"x" * 32, b"y" * 32)))
    with pytest.raises(UpdateRejected, match="left secure round"):
        sim.server.receive("share", "c2", SecAggMessage("s", ROUND, "share", withdraw="lost my keys"))


def test_masked_sum_decodes_to_the_weighted_mean_and_keeps_variances_positive() -> None:
    template = {"w": torch.zeros(2, 3), "bn.running_var": torch.full((3,), 1e-4), "steps": torch.zeros((), dtype=torch.int64)}
    strategy = SecureAggregation(_NoInner(), SecAggSettings(bits=BITS, clip=CLIP, max_weight=MAX_WEIGHT))
    from fedtl.common.config import UpdateKind
    from fedtl.server.validation import Expectation

    base = Expectation(ROUND, DIGEST, UpdateKind.WEIGHT_DELTA, {n: (t.dtype, tuple(t.shape)) for n, t in template.items()},
                       frozenset({"w"}), positive={"bn.running_var": template["bn.running_var"]})
    names = ("a", "b", "c")
    aggregator = strategy.open(template, RoundContext(ROUND, UpdateKind.WEIGHT_DELTA, frozenset({"w"}), names, 1, DIGEST))
    assert isinstance(aggregator, MaskedSum)
    expect = aggregator.expectation(strategy.expectation(base))
    assert expect.specs == {"masked": (torch.int32, (fixedpoint.length(9),))}  # 3 x 1000 x 16 bits fit 32-bit words
    protocol = aggregator.protocol
    rng = np.random.default_rng(5)
    clients = {}
    for i, name in enumerate(names):
        update = np.concatenate([np.full(3, -1e-3), np.full(6, 0.1 * (i + 1))])  # sorted names: bn.running_var, then w
        encoded, _ = fixedpoint.encode(update, i + 1, CLIP, BITS, rng, {}, 32)
        clients[name] = SecureRound(protocol.setup, ROUND, DIGEST, name, "s", encoded)
    for name in names:
        protocol.receive("advertise", name, clients[name].start())
    for phase in PHASES[1:]:
        protocol.opened(phase, list(names))
        for name in names:
            answer = clients[name].handle(protocol.instruction(phase, name))
            if phase == "train":
                aggregator.add(name, Update({"masked": torch.from_numpy(answer.view(np.int32))}), 1.0)
            else:
                protocol.receive(phase, name, answer)
    result = aggregator.result()
    assert result.total_weight == 6 and result.count == 3 and result.metrics["examples"] == 6
    assert torch.allclose(result.tensors["w"], torch.full((2, 3), (0.1 + 0.4 + 0.9) / 6, dtype=torch.float64), atol=1e-4)
    assert bool((template["bn.running_var"].double() + result.tensors["bn.running_var"] > 0).all())  # -1e-3 would go below zero
    assert "steps" not in result.tensors  # integer buffers are not averaged under secure aggregation


class _NoInner:
    def describe(self) -> str:
        return "mean"


def _chi_square_limit(dof: int, z: float) -> float:
    """The chi-square quantile for `dof` degrees of freedom at standard-normal quantile z (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
