"""Closed-form heads (common/heads.py, server/statistics_rounds.py): pooled from any split of the data they equal the head
solved on the pooled data, and a real federation's round 1 writes exactly that head into the global model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import audited_updates
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtl.common import heads
from fedtl.common.errors import ConfigError
from fedtl.common.partition import partition
from fedtl.server.config import parse_args


def _data(n: int = 600, dim: int = 24, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    features = (centres[labels] + 0.8 * torch.randn(n, dim, generator=g)).relu()  # non-negative, like pooled activations
    return features.float(), labels


def _pooled(kind: str, features: torch.Tensor, labels: torch.Tensor, parts: list[np.ndarray], classes: int = 10) -> dict[str, torch.Tensor]:
    """The coordinator's mean of the clients' mean statistics, weighted by their example counts (what the Mean rule does)."""
    total = sum(len(p) for p in parts)
    stats = [(heads.statistics(kind, features[p], labels[p], classes), len(p)) for p in parts if len(p)]
    return {name: sum(s[name] * n for s, n in stats) / total for name in stats[0][0]}


def _central_ridge(features: torch.Tensor, labels: torch.Tensor, lam: float, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression on the pooled data, written out directly (normal equations on the full matrices)."""
    n = len(labels)
    phi = torch.cat([features.double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    y = torch.nn.functional.one_hot(labels, classes).double()
    gram = phi.T @ phi / n
    scale = float(torch.diagonal(gram)[:-1].mean())
    solution = torch.linalg.solve(gram + lam * scale * torch.eye(phi.shape[1], dtype=torch.float64), phi.T @ y / n)
    return solution[:-1].T, solution[-1]


SPLITS = {
    "iid": lambda labels: partition(labels.numpy(), 8, "iid", seed=1),
    "dirichlet-0.1": lambda labels: partition(labels.numpy(), 8, "dirichlet", alpha=0.1, seed=1),
    "one-class-per-client": lambda labels: [np.flatnonzero(labels.numpy() == c) for c in range(10)],
}


@pytest.mark.parametrize("split", list(SPLITS))
def test_the_pooled_ridge_head_is_the_centralised_one_for_any_split(split: str) -> None:
    features, labels = _data()
    parts = SPLITS[split](labels)
    weight, bias = heads.ridge(_pooled("ridge", features, labels, parts), 0.1)
    want_w, want_b = _central_ridge(features, labels, 0.1)
    assert torch.allclose(weight, want_w, rtol=1e-9, atol=1e-12) and torch.allclose(bias, want_b, rtol=1e-9, atol=1e-12)
    logits = features.double() @ weight.T + bias
    assert torch.equal(logits.argmax(1), (features.double() @ want_w.T + want_b).argmax(1))
    accuracy = float((logits.argmax(1) == labels).double().mean())
    assert accuracy > 0.5, "the head should have learned the classes (else this test proves little)"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=60, max_size=60), st.floats(1e-4, 10.0))
def test_ridge_does_not_depend_on_who_holds_which_example(owners: list[int], lam: float) -> None:
    features, labels = _data(n=60, dim=6, seed=3)
    owner = np.asarray(owners)
    parts = [np.flatnonzero(owner == k) for k in range(8)]
    got = heads.ridge(_pooled("ridge", features, labels, parts), lam)
    want = heads.ridge(heads.statistics("ridge", features, labels, 10), lam)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_class_means_are_the_pooled_class_means_and_need_no_gram() -> None:
    features, labels = _data()
    stats = _pooled("ncm", features, labels, SPLITS["dirichlet-0.1"](labels))
    assert set(stats) == {heads.CROSS}
    weight, bias = heads.class_means(stats)
    for c in range(10):
        mean = features[labels == c].double().mean(0)
        assert torch.allclose(weight[c], mean / mean.norm(), atol=1e-12)
    assert torch.equal(bias, torch.zeros(10, dtype=torch.float64))


def test_a_class_no_client_has_gets_a_zero_row_not_nan() -> None:
    features, labels = _data()
    keep = labels != 3
    weight, _ = heads.class_means(heads.statistics("ncm", features[keep], labels[keep], 10))
    assert torch.isfinite(weight).all() and float(weight[3].abs().sum()) == 0


def test_packed_gram_round_trips_and_sizes_match_the_specs() -> None:
    features, labels = _data(n=50, dim=5)
    stats = heads.statistics("ridge", features, labels, 10)
    for name, (dtype, shape) in heads.specs("ridge", 5, 10).items():
        assert stats[name].dtype == dtype and tuple(stats[name].shape) == shape
    phi = torch.cat([features.double(), torch.ones(50, 1, dtype=torch.float64)], 1)
    assert torch.allclose(heads.unpack_gram(stats[heads.GRAM], 6), phi.T @ phi / 50)


def test_the_logit_scale_keeps_predictions_and_spreads_logits() -> None:
    features, labels = _data()
    for kind in ("ridge", "ncm"):
        stats = heads.statistics(kind, features, labels, 10)
        weight, bias = heads.solve(kind, stats, 0.1)
        scale = heads.logit_scale(weight, bias, stats)
        assert scale > 0
        logits = features.double() @ weight.T + bias
        scaled = logits * scale
        assert torch.equal(logits.argmax(1), scaled.argmax(1))
        if kind == "ridge":  # each class's logit varies over the pooled data by 4 (root mean square over classes)
            spread = float(scaled.var(0, unbiased=False).mean().sqrt())
        else:  # class means: the logits of the mean feature have a root mean square of 4
            spread = float((scaled.mean(0) - bias * scale).pow(2).mean().sqrt())
        assert spread == pytest.approx(4.0, rel=1e-6), kind


# ---------------------------------------------------------------- configuration


def _cfg(*flags: str):  # type: ignore[no-untyped-def]
    return parse_args(["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", *flags], env={})


def test_auto_is_ridge_for_a_frozen_backbone_and_none_otherwise() -> None:
    assert _cfg("--train", "head").statistics.head == "ridge"
    assert _cfg("--train", "all").statistics.head == ""
    assert _cfg("--train", "head", "--aggregation", "median").statistics.head == ""  # a sum has no robust form
    assert _cfg("--train", "head", "--algorithm", "fedsgd").statistics.head == ""
    assert _cfg("--train", "head", "--head-init", "none").statistics.head == ""
    assert _cfg("--train", "all", "--head-init", "ncm").statistics.head == "ncm"  # asked for: then fine-tuned from it
    # after a ridge head on a frozen backbone the server steps gently unless told otherwise (docs/learning.md)
    assert _cfg("--train", "head").strategy.lr == 0.1 and _cfg("--train", "head", "--server-lr", "1").strategy.lr == 1.0
    assert _cfg("--train", "head", "--head-init", "none").strategy.lr == 1.0 and _cfg("--train", "all").strategy.lr == 1.0
    assert _cfg("--train", "head", "--server-optimizer", "adam").strategy.lr == _cfg("--server-optimizer", "adam").strategy.lr


@pytest.mark.parametrize("flags, words", [
    (["--head-init", "ridge", "--aggregation", "trimmed-mean"], "--aggregation trimmed-mean"),
    (["--head-init", "ridge", "--dp-clip", "1", "--dp-noise", "1", "--head-feature-clip", "40"], "record-level DP with a ridge head"),
    (["--head-init", "ncm", "--dp-clip", "1", "--dp-noise", "1"], "record-level DP without --head-feature-clip"),
    (["--head-init", "ncm", "--client-dp-clip", "1", "--client-dp-noise", "1", "--head-feature-clip", "40"], "client-level DP"),
    (["--head-ridge", "0"], "--head-ridge must be > 0"),
    (["--statistics-clients", "0"], "--statistics-clients must be >= 1"),
    (["--head-init", "ridge", "--secure-aggregation", "--max-update-norm", "10", "--min-clients", "3"], "without --head-feature-clip"),
    (["--head-feature-clip", "-1"], "--head-feature-clip must be a finite number >= 0"),
    (["--head-init", "none", "--head-feature-clip", "40"], "--head-feature-clip applies to a closed-form head"),
    (["--batchnorm", "pool", "--train", "all", "--rounds", "5", "--secure-aggregation", "--max-update-norm", "10", "--min-clients", "3"],
     "BatchNorm's statistics would leave clients unmasked"),
])
def test_bad_head_settings_are_refused_with_the_flag_named(flags: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        _cfg("--train", "head", *flags)


def test_under_record_level_dp_noised_class_means_are_asked_for_and_take_half_the_budget() -> None:
    from fedtl.common.config import TrainConfig

    private = ["--train", "head", "--dp-clip", "1", "--dp-epsilon", "4", "--rounds", "5"]
    assert _cfg(*private).statistics.head == "", "auto: DP-SGD from round 1 (it measured better)"
    cfg = _cfg(*private, "--head-feature-clip", "40", "--head-init", "ncm")
    assert cfg.statistics.head == "ncm" and cfg.statistics.dp_share == 0.5
    assert cfg.train.dp_rounds == 4, "DP-SGD's budget is spread over the rounds after the head's"
    head_round = cfg.statistics.round_config(cfg.train, "ncm")
    assert head_round.dp_epsilon == 2 and head_round.feature_clip == 40 and head_round.private
    assert _cfg(*private[:-1], "1", "--head-feature-clip", "40", "--head-init", "ncm").statistics.dp_share == 1.0, "one round: all"
    assert _cfg("--train", "head", "--head-feature-clip", "40").statistics.round_config(TrainConfig(), "ridge").dp_epsilon == 0


def test_under_secure_aggregation_auto_builds_the_head_only_given_the_feature_clip() -> None:
    secure = ["--train", "head", "--secure-aggregation", "--max-update-norm", "10", "--min-clients", "3"]
    assert _cfg(*secure).statistics.head == ""
    plan = _cfg(*secure, "--head-feature-clip", "40").statistics
    assert plan.head == "ridge" and plan.feature_clip == 40 and plan.secure is not None
    from fedtl.common.config import TrainConfig

    assert plan.round_config(TrainConfig(), "ridge").feature_clip == 40 and plan.round_config(TrainConfig(), "batchnorm").feature_clip == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.floats(0.01, 100), st.floats(0.01, 100), st.sampled_from(["ridge", "ncm"]))
def test_no_clipped_client_statistics_leave_the_bound(n: int, dim: int, spread: float, clip: float, kind: str) -> None:
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(n * dim), dtype=torch.float64).abs() * spread
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
    stats = heads.statistics(kind, features, labels, 3, clip)
    norm = float(torch.cat([t.reshape(-1) for t in stats.values()]).norm())
    assert norm <= heads.bound(kind, clip) * (1 + 1e-12)
    assert float(heads.clip_features(features, clip).norm(dim=1).max()) <= clip * (1 + 1e-12)


def test_round_one_asks_every_client_up_to_the_cap_then_a_seeded_sample() -> None:
    import random

    from fedtl.server.selection import Selector

    names = [f"c{i:03d}" for i in range(250)]
    schedule = _cfg().schedule
    assert Selector(schedule, random.Random(0)).sample(names[:40], 100) == names[:40]
    picked = Selector(schedule, random.Random(0)).sample(names, 100)
    assert len(set(picked)) == 100 and set(picked) <= set(names)
    assert picked == Selector(schedule, random.Random(0)).sample(names, 100)  # the run's checkpointed RNG: the same after a resume


def test_a_head_that_is_not_linear_is_refused_when_asked_and_skipped_by_auto() -> None:
    from fedtl.common.models import build_network
    from fedtl.server.settings.statistics import StatisticsPlan
    from fedtl.server.statistics_rounds import StatisticsRounds

    net = build_network("tiny_cnn", 10, "none", seed=0)
    head_index = len(net.stages) - 1
    net.stages[head_index] = (net.stages[head_index][0], torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    assert StatisticsRounds(StatisticsPlan("ridge", head_auto=True), net, head_index, frozenset(), 5).for_round(1) is None
    with pytest.raises(ConfigError, match="not a Linear layer"):
        StatisticsRounds(StatisticsPlan("ridge"), net, head_index, frozenset(), 5)


# ---------------------------------------------------------------- a real federation

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--join-grace", "0", "--keep-round-models",
        "--finish-grace", "5", "--wait-timeout", "90", "--train", "head"]


def _pooled_features(model: dict[str, torch.Tensor], tmp_path) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Every training image of the run through the initial model's frozen backbone, in one place (the centralised view)."""
    from fedtl.common.batches import InputTransform
    from fedtl.common.data import open_split
    from fedtl.common.features import compute_features
    from fedtl.common.inputs import ImageInputs
    from fedtl.common.models import build_network

    net = build_network("tiny_cnn", 10, "none", seed=0)
    net.module.load_state_dict(model)
    images = open_split("synthetic:600", "train", tmp_path).load()
    inputs = ImageInputs.of(images, InputTransform(net.spec.mean, net.spec.std, 32, False), torch.device("cpu"))
    return compute_features(net, inputs, len(net.stages) - 1).reshape(len(images), -1), images.labels


@pytest.mark.parametrize("kind", ["ridge", "ncm"])
def test_round_one_of_a_real_federation_writes_the_pooled_head(inprocess_federation, tmp_path, kind: str) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation([*TINY, "--rounds", "2", "--min-clients", "3", "--partition-scheme", "dirichlet", "--alpha", "0.1",
                                "--head-init", kind, "--lr", "0.05"])
    fed.start_server()
    for i in range(3):
        fed.start_client(f"s{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    assert all(c.wait(60) == 0 for c in fed.clients.values())

    updates = audited_updates(tmp_path / "audit", 1)
    assert len(updates) == 3 and {info["kind"] for _, _, info in updates} == {"STATISTICS"}
    assert sum(n for _, n, _ in updates) == 600
    features, labels = _pooled_features(fed.model(0), tmp_path)
    central = heads.statistics(kind, features, labels, 10)  # the statistics of all 600 images in one place
    weight, bias = heads.solve(kind, central, 0.1)
    if kind == "ridge":
        want_w, want_b = _central_ridge(features, labels, 0.1)
        assert torch.allclose(weight, want_w, rtol=1e-8, atol=1e-10) and torch.allclose(bias, want_b, rtol=1e-8, atol=1e-10)
    scale = heads.logit_scale(weight, bias, central)
    after = fed.model(1)
    assert torch.allclose(after["fc.weight"].double(), weight * scale, rtol=1e-5, atol=1e-6)
    assert torch.allclose(after["fc.bias"].double(), bias * scale, rtol=1e-5, atol=1e-6)
    before = fed.model(0)
    assert all(torch.equal(after[n], before[n]) for n in before if not n.startswith("fc.")), "the backbone must not move"
    rounds = {r["round"]: r for r in fed.rounds()}
    assert rounds[1]["statistics"] == kind and rounds[1]["answered"] == 3 and rounds[2]["statistics"] == ""
    assert f"{kind} head from 600 examples' statistics" in fed.server.log
    assert {info["kind"] for _, _, info in audited_updates(tmp_path / "audit", 2)} == {"WEIGHT_DELTA"}  # then training, as usual


@pytest.mark.parametrize("kind", ["ridge", "ncm"])
def test_under_secure_aggregation_round_one_writes_the_pooled_head_of_clipped_features(inprocess_federation, tmp_path,  # type: ignore[no-untyped-def]
                                                                                        kind: str) -> None:
    clip = 0.5  # about the median feature norm of this model on this data: about half the examples are clipped
    fed = inprocess_federation([*TINY, "--rounds", "2", "--min-clients", "3", "--partition-scheme", "dirichlet", "--alpha", "0.1",
                                "--head-init", kind, "--lr", "0.05", "--secure-aggregation", "--max-update-norm", "10", "--min-clients", "3",
                                "--head-feature-clip", str(clip)])
    fed.start_server()
    for i in range(3):
        fed.start_client(f"s{i}", ["--data", "synthetic:600", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(180) == 0, fed.server.log
    assert all(c.wait(60) == 0 for c in fed.clients.values())

    from fedtl.common import checkpoint

    assert not audited_updates(tmp_path / "audit", 1), "no statistics leave a client in the clear"
    inputs = [checkpoint.load_tensors(tmp_path / "audit" / f"s{i}-round0001-secagg-input.safetensors").tensors["encoded"]
              for i in range(3)]  # each client's fixed-point input before masking: clipped flag, then weight, last
    assert all(t.dtype == torch.int64 for t in inputs), "as wide as the 64-bit sum allows"
    assert [int(t[-2]) for t in inputs] == [0, 0, 0], "the range bounds every honest client's statistics: none is clipped"
    assert sum(int(t[-1]) for t in inputs) == 600, "weighted by examples"
    features, labels = _pooled_features(fed.model(0), tmp_path)
    assert 0 < int((features.norm(dim=1) > clip).sum()) < len(features)
    central = heads.statistics(kind, features, labels, 10, clip)  # all 600 images' clipped features in one place
    weight, bias = heads.solve(kind, central, 0.1)
    scale = heads.logit_scale(weight, bias, central)
    after, before = fed.model(1), fed.model(0)
    got_w, got_b = after["fc.weight"].double() / scale, after["fc.bias"].double() / scale
    assert torch.allclose(got_w, weight, rtol=1e-4, atol=1e-4 * float(weight.abs().max()))
    assert torch.allclose(got_b, bias, rtol=1e-4, atol=1e-4 * float(weight.abs().max()) + 1e-12)
    assert torch.equal((features.double() @ got_w.T + got_b).argmax(1), (features.double() @ weight.T + bias).argmax(1))
    assert all(torch.equal(after[n], before[n]) for n in before if not n.startswith("fc.")), "the backbone must not move"
    assert {r["round"]: r["statistics"] for r in fed.rounds() if r["round"]} == {1: kind, 2: ""}
    assert f"{kind} head from 600 examples' statistics" in fed.server.log


def test_statistics_no_honest_client_could_send_are_refused_and_claims_are_capped() -> None:
    from fedtl.common.errors import UpdateRejected
    from fedtl.common.models import build_network
    from fedtl.server.settings.statistics import StatisticsPlan
    from fedtl.server.statistics_rounds import StatisticsRounds
    from fedtl.server.validation import Update

    net = build_network("tiny_cnn", 10, "none", seed=0)
    rounds = StatisticsRounds(StatisticsPlan("ridge"), net, len(net.stages) - 1, frozenset(), 5, caps=lambda client: 100.0)
    head = rounds.for_round(1)
    assert head is not None and rounds.for_round(2) is None
    features, labels = _data(n=100, dim=32)
    honest = heads.statistics("ridge", features, labels, 10)
    assert heads.problem(honest) == ""
    aggregator = head.aggregator(head.expectation(1, "b" * 64, 1 << 40), rounds.caps)
    aggregator.add("honest", Update(dict(honest)), 100.0)
    inflated = {k: v.clone() for k, v in honest.items()}
    inflated[heads.CROSS][:-1] *= 50  # a steered head, claiming 10 million examples
    aggregator.add("greedy", Update(inflated), 10_000_000.0)
    result = aggregator.result()
    assert result.total_weight == 200.0 and result.stats.get("capped") == 1  # its claim counts as its shard's size
    for name, change in ((heads.GRAM, lambda t: t.__setitem__(-1, 2.0)), (heads.CROSS, lambda t: t[-1].__setitem__(0, -0.5))):
        forged = {k: v.clone() for k, v in honest.items()}
        change(forged[name])
        assert heads.problem(forged)
        with pytest.raises(UpdateRejected, match="cannot be a client's") as refused:
            head.aggregator(head.expectation(1, "b" * 64, 1 << 40)).add("forger", Update(forged), 10.0)
        assert refused.value.reason == "bad_statistics"


def test_batchnorm_moments_with_a_mean_square_below_the_squared_mean_are_refused() -> None:
    from fedtl.common import batchnorm

    good = {f"{batchnorm.PREFIX}l.mean": torch.tensor([1.0, -2.0], dtype=torch.float64),
            f"{batchnorm.PREFIX}l.square": torch.tensor([1.5, 4.0], dtype=torch.float64)}
    assert batchnorm.problem(good) == ""
    bad = dict(good)
    bad[f"{batchnorm.PREFIX}l.square"] = torch.tensor([1.5, 3.0], dtype=torch.float64)
    assert "l: a mean square below the squared mean" in batchnorm.problem(bad)


def test_a_client_with_an_empty_shard_sends_zeros_claiming_no_examples() -> None:
    from fedtl.client.local_round import LocalRound
    from fedtl.common.config import TrainConfig, UpdateKind
    from fedtl.common.inputs import FeatureInputs
    from fedtl.common.models import build_network

    net = build_network("tiny_cnn", 10, "none", seed=0)
    head = len(net.stages) - 1
    empty = FeatureInputs(labels=torch.zeros(0, dtype=torch.int64), start_stage=head, features=torch.zeros(0, 32))
    result = LocalRound(net, head, TrainConfig(statistics="ridge"), 0, empty, None, {}).statistics()
    assert result.num_examples == 0 and result.kind == UpdateKind.STATISTICS  # the coordinator refuses a claim of 0 examples
    assert set(result.update.specs) == set(heads.specs("ridge", 32, 10))
    out = torch.empty(result.update.specs[heads.CROSS][1], dtype=torch.float64)
    result.update.write(heads.CROSS, out)
    assert float(out.abs().sum()) == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 1 << 20))
def test_a_statistics_round_takes_the_widest_fixed_point_the_64_bit_sum_holds(clients: int, max_weight: int) -> None:
    from fedtl.common.secagg import fixedpoint

    fits = [b for b in range(1, fixedpoint.MAX_BITS + 1) if clients * max_weight * (2**b - 1) < 2**64]  # integer arithmetic
    assert fixedpoint.widest_bits(clients, max_weight) == max(fits, default=1)


def test_securely_pooled_statistics_that_no_data_could_give_fail_the_round_closed() -> None:
    from types import SimpleNamespace

    from fedtl.common.models import build_network
    from fedtl.common.secagg.messages import SecAggSetup
    from fedtl.server.settings.statistics import StatisticsPlan
    from fedtl.server.statistics_rounds import HeadRound, _SecurelyChecked
    from fedtl.server.strategies.base import Aggregate
    from fedtl.server.strategies.stacked import AggregationError

    net = build_network("tiny_cnn", 10, "none", seed=0)
    rnd = HeadRound(net, StatisticsPlan("ncm", feature_clip=1.0))
    good = heads.statistics("ncm", torch.rand(30, rnd.linear.in_features), torch.arange(30) % 10, 10, 1.0)
    setup = SecAggSetup(("a", "b", "c"), 2, 2, b"0" * 16, 41, heads.bound("ncm", 1.0), 1 << 16)

    def checked(stats: dict[str, torch.Tensor]) -> _SecurelyChecked:
        inner = SimpleNamespace(protocol=None, setup=setup, result=lambda: Aggregate(stats, 30.0, 3), stats=dict)
        return _SecurelyChecked(inner, rnd)  # type: ignore[arg-type]

    assert checked(good).result().tensors is good
    forged = {heads.CROSS: good[heads.CROSS].clone()}
    forged[heads.CROSS][-1] *= 3  # class frequencies summing to 3: no data has them
    with pytest.raises(AggregationError, match="failed|cannot come from clients' data"):
        checked(forged).result()
