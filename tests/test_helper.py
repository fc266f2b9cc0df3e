"""The helper's gRPC methods against a real server on loopback: who may ask what (a client deposits only under its own
name and credential; only the leader binds, opens and sums), and every resource a client can hold is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from helper_server import HelperServer

from fedtl.common.errors import UpdateRejected
from fedtl.common.validated_sum.proof import Shape
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc
from fedtl.server.auth import Authenticator
from fedtl.server.helper.state import HelperState

TOKENS = {"alice": "a" * 20, "bob": "b" * 20}
LEADER = "L" * 24
SHAPE = pb.ValidatedShape(coordinates=10, bits=8, bound=70_000)


@pytest.fixture
def helper() -> Iterator[tuple[HelperServer, pb_grpc.HelperStub]]:
    server = HelperServer(HelperState(max_clients=2), Authenticator(per_client=TOKENS), LEADER)
    channel = grpc.insecure_channel(server.address)
    yield server, pb_grpc.HelperStub(channel)
    channel.close()
    server.close()


def _as(name: str, token: str) -> list[tuple[str, str]]:
    return [("x-fedtl-client", name), ("authorization", f"Bearer {token}")]


def _refused(call, request, metadata, code: grpc.StatusCode, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=20)
    assert info.value.code() == code and text in info.value.details(), (info.value.code(), info.value.details())


def test_clients_deposit_only_as_themselves_and_only_the_leader_reads(helper) -> None:  # type: ignore[no-untyped-def]
    _, stub = helper
    stub.Deposit(pb.HelperDeposit(round=1, client_name="alice", seed=bytes(32)), metadata=_as("alice", TOKENS["alice"]), timeout=20)
    _refused(stub.Deposit, pb.HelperDeposit(round=1, client_name="alice", seed=bytes(32)), _as("alice", TOKENS["bob"]),
             grpc.StatusCode.UNAUTHENTICATED, "")  # bob's token for alice
    _refused(stub.Deposit, pb.HelperDeposit(round=1, client_name="alice", seed=bytes(32)), _as("bob", TOKENS["bob"]),
             grpc.StatusCode.UNAUTHENTICATED, "a deposit for client 'alice'")  # bob depositing as alice
    bind = pb.HelperBind(round=1, shape=SHAPE, clients=["alice", "bob"])
    _refused(stub.Bind, bind, _as("alice", TOKENS["alice"]), grpc.StatusCode.UNAUTHENTICATED, "only the leader")
    for call, request in ((stub.Open, pb.HelperOpen(round=1, challenge_seed=bytes(32), clients=["alice"])),
                          (stub.Sum, pb.HelperSum(round=1, clients=["alice"], weights=[1]))):
        _refused(call, request, [("authorization", "Bearer wrong-leader-token")], grpc.StatusCode.UNAUTHENTICATED, "only the leader")
    leader = [("authorization", f"Bearer {LEADER}")]
    assert set(stub.Bind(bind, metadata=leader, timeout=20).bindings) == {"alice"}  # bob never deposited: left out
    openings = stub.Open(pb.HelperOpen(round=1, challenge_seed=bytes(32), clients=["alice", "bob"]), metadata=leader, timeout=20)
    assert set(openings.openings) == {"alice"}
    assert len(stub.Sum(pb.HelperSum(round=1, clients=["alice"], weights=[1]), metadata=leader, timeout=20).values) == 8 * (10 + 40)  # the norm counts
    _refused(stub.Sum, pb.HelperSum(round=1, clients=["bob"], weights=[1]), leader, grpc.StatusCode.INVALID_ARGUMENT, "bound clients")


def test_what_a_client_can_park_at_the_helper_is_bounded(helper) -> None:  # type: ignore[no-untyped-def]
    _, stub = helper
    alice, bob = _as("alice", TOKENS["alice"]), _as("bob", TOKENS["bob"])
    _refused(stub.Deposit, pb.HelperDeposit(round=1, client_name="alice", seed=bytes(31)), alice, grpc.StatusCode.INVALID_ARGUMENT, "32-byte")
    for name, metadata in (("alice", alice), ("bob", bob)):
        stub.Deposit(pb.HelperDeposit(round=1, client_name=name, seed=bytes(32)), metadata=metadata, timeout=20)
    stub.Deposit(pb.HelperDeposit(round=1, client_name="alice", seed=b"\1" * 32), metadata=alice, timeout=20)  # again: replaces
    for far in (1000, 1001):  # seeds parked for rounds far ahead: held while there is room...
        stub.Deposit(pb.HelperDeposit(round=far, client_name="alice", seed=bytes(32)), metadata=alice, timeout=20)
    _refused(stub.Deposit, pb.HelperDeposit(round=1002, client_name="alice", seed=bytes(32)), alice, grpc.StatusCode.FAILED_PRECONDITION,
             "3 earlier rounds wait")
    stub.Deposit(pb.HelperDeposit(round=2, client_name="bob", seed=bytes(32)), metadata=bob, timeout=20)  # ...and evicted by a near one
    state = HelperState(max_clients=2)
    state.deposit(1, "alice", bytes(32))
    state.deposit(1, "bob", bytes(32))
    with pytest.raises(UpdateRejected, match="holds 2 deposits"):
        state.deposit(1, "carol", bytes(32))
    state.bind(1, Shape(10, 8, 70_000), ["alice"])
    with pytest.raises(UpdateRejected, match="round 0 is over"):
        state.deposit(0, "alice", bytes(32))


def test_the_helper_command_refuses_to_run_unprotected_and_says_what_it_needs() -> None:
    import subprocess
    import sys

    from harness import ENV, ROOT

    done = subprocess.run([sys.executable, "-m", "fedtl.cli", "helper", "--address", "127.0.0.1:0"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "needs --tls-cert/--tls-key, client tokens" in done.stderr and "Traceback" not in done.stderr


def test_the_bound_follows_the_median_norm_from_the_counts_and_survives_a_restart() -> None:
    """The next bound is the lowest level bound / 1.25^k that at most half the clients exceed; more than half clipped:
    1.25 x; never above --max-update-norm; checkpointed with the strategy; one liar moves a count by one."""
    import torch

    from fedtl.server.strategies import StrategySettings, build_strategy
    from fedtl.server.strategies.base import Aggregate, RoundContext
    from fedtl.server.validated import ValidatedSettings
    from fedtl.server.validated.strategy import next_bound

    def counts(norms: list[float], bound: float) -> list[int]:
        return [sum(n > bound * 1.25**-k for n in norms) for k in range(40)]

    norms = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 50.0]  # 8 clients, median ~0.85; one huge
    assert next_bound(10.0, counts(norms, 10.0), 8, 0.5, 10.0) == pytest.approx(10.0 * 1.25**-11)  # 0.859: 4 of 8 above
    assert next_bound(1.0, counts([5.0] * 8, 1.0), 8, 0.5, 10.0) == 1.25  # everyone clipped: grow
    assert next_bound(9.0, counts([50.0] * 8, 9.0), 8, 0.5, 10.0) == 10.0  # ...never past the cap
    lying = counts(norms, 10.0)
    lying[12] -= 1  # one client's bits say "not above" where it is
    assert next_bound(10.0, lying, 8, 0.5, 10.0) == pytest.approx(10.0 * 1.25**-11)
    settings = ValidatedSettings("127.0.0.1:1", None, None, 16, 10.0, 0.5)
    strategy = build_strategy(StrategySettings(validated=settings))
    stats = {f"above_{k}": n for k, n in enumerate(counts(norms, 10.0))}
    strategy.apply({"w": torch.zeros(2)}, Aggregate({"w": torch.zeros(2, dtype=torch.float64)}, 8.0, 8, stats=stats),
                   RoundContext(1, None, frozenset({"w"})))  # type: ignore[arg-type]
    assert strategy.clip == pytest.approx(10.0 * 1.25**-11)  # type: ignore[attr-defined]
    restored = build_strategy(StrategySettings(validated=settings))
    restored.load_state_dict(strategy.state_dict())
    assert restored.clip == pytest.approx(strategy.clip)  # type: ignore[attr-defined]


def test_over_tls_a_site_deposits_with_its_own_ca_and_the_leader_binds_opens_and_sums_with_its_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The deployment's path: the helper's certificate from server.certs, a site's deposit through client/connection.py
    (its --helper-ca-cert, its token), the coordinator's HelperLink (--helper-ca-cert, --helper-token); a wrong leader
    token is refused, with the flags to check."""
    import numpy as np

    from fedtl.client.config import parse_args as client_args
    from fedtl.client.connection import deposit_to_helper
    from fedtl.common.validated_sum import proof
    from fedtl.server import certs
    from fedtl.server.strategies.stacked import AggregationError
    from fedtl.server.validated import ValidatedSettings
    from fedtl.server.validated.link import HelperLink

    assert certs.main(["--out", str(tmp_path / "helper"), "--server-name", "localhost"]) == 0
    ca, cert, key = tmp_path / "helper" / "ca.pem", tmp_path / "helper" / "server.pem", tmp_path / "helper" / "server.key"
    server = HelperServer(HelperState(), Authenticator(per_client=TOKENS), LEADER, tls=(cert, key))
    try:
        address = f"localhost:{server.port}"
        site = client_args(["--name", "alice", "--token", TOKENS["alice"], "--helper", address, "--helper-ca-cert", str(ca)], env={})
        shape = proof.Shape(10, 8, proof.norm_bound(8, 10))
        leader_share, seed = proof.share(proof.wires_of(np.full(10, 128), shape), shape)
        deposit_to_helper(site, 4, seed)
        link = HelperLink(ValidatedSettings(address, ca, LEADER, 8, 1.0))
        assert set(link.bind(4, shape, ["alice"])) == {"alice"}
        opened = link.open(4, bytes(32), ["alice"], shape.side + shape.norm_side + 4)
        mine = proof.Party(shape, leader=leader_share)
        assert proof.valid(shape, mine.binding(), link.bind(4, shape, ["alice"])["alice"], mine.open(proof.Challenge.from_seed(bytes(32), shape)),
                           opened["alice"])
        assert link.sum(4, ["alice"], [1], 10 + proof.NORM_LEVELS).shape == (10 + proof.NORM_LEVELS,)
        with pytest.raises(AggregationError, match="--helper-token"):
            HelperLink(ValidatedSettings(address, ca, "not-the-leader-token", 8, 1.0)).bind(4, shape, ["alice"])
    finally:
        server.close()
