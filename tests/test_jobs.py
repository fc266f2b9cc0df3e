"""A standing federation's plain parts without a network: a site's policy, a job's settings, the job store, the wire's
bounds on what a site answers (docs/jobs.md). tests/test_standing.py drives them through real processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtl.client.mods.policy import SitePolicy, SitePolicyMod
from fedtl.common import wire_jobs
from fedtl.common.config import DataAssignment, TrainConfig, TrainTask
from fedtl.common.errors import ConfigError, CorruptError, PrivacyRefused
from fedtl.common.jobs import JobOffer, ModelToEvaluate, SiteStatistics
from fedtl.protos import federation_pb2 as pb
from fedtl.server.standing import terms
from fedtl.server.standing.jobs import JobStore

TRAIN = JobOffer("o", "job-0001", "train", model="tiny_cnn", rounds=10, local_epochs=2, record_dp=True, dp_epsilon=4.0)


@pytest.mark.parametrize(("policy", "rule"), [
    (SitePolicy(kinds=("statistics",)), "only in statistics jobs"),
    (SitePolicy(models=("resnet18",)), "model tiny_cnn is not one it trains"),
    (SitePolicy(secure_aggregation=True), "only under secure aggregation"),
    (SitePolicy(max_epsilon=3.0), "ε 4 is over its --max-epsilon 3"),
    (SitePolicy(max_rounds=5), "10 rounds, over its --max-job-rounds 5"),
    (SitePolicy(max_epochs=15), "10 rounds x 2 local epochs, over its --max-job-epochs 15"),
    (SitePolicy(models=("tiny_cnn",), max_epsilon=4.0, max_rounds=10, max_epochs=20), ""),
])
def test_a_site_policy_names_the_first_rule_an_offer_breaks(policy: SitePolicy, rule: str) -> None:
    refusal = policy.refuses(TRAIN)
    assert (rule in refusal and refusal) if rule else refusal == ""


def test_the_policy_binds_each_task_whatever_the_offer_said() -> None:
    mod = SitePolicyMod(SitePolicy(secure_aggregation=True, max_rounds=3))
    task = TrainTask(1, (), "", TrainConfig(), DataAssignment())
    with pytest.raises(PrivacyRefused, match="only under secure aggregation"):
        mod.admit(task)
    with pytest.raises(PrivacyRefused, match="round 4 is past its --max-job-rounds 3"):
        SitePolicyMod(SitePolicy(max_rounds=3)).admit(TrainTask(4, (), "", TrainConfig(), DataAssignment()))
    exact = JobOffer("o", "j", "statistics")
    assert "only with noise" in SitePolicy(max_epsilon=1.0).refuses(exact)
    assert SitePolicy(max_epsilon=1.0).refuses(JobOffer("o", "j", "statistics", statistics_epsilon=0.5)) == ""


@pytest.mark.parametrize("flag", ["--address", "--token", "--tls-cert", "--run-dir", "--dashboard", "--operator-token", "--config"])
def test_a_job_cannot_set_the_coordinators_own_settings(flag: str) -> None:
    with pytest.raises(ConfigError, match=f"{flag} is the standing coordinator's own setting"):
        terms.job_settings(["--rounds", "2", f"{flag}=x"])


def test_a_job_names_no_code_for_the_coordinator_unless_allowed(tmp_path: Path) -> None:
    job = terms.job_settings(["--metric-aggregation", "somewhere.module:function"])
    with pytest.raises(ConfigError, match="--allow-job-plugins"):
        terms.job_config([], [], job, None, tmp_path / "run", {}, allow_plugins=False)
    stats = terms.job_settings(["--kind", "statistics", "--statistics-epsilon", "0.5"])
    assert (stats.kind, stats.statistics_epsilon, stats.flags) == ("statistics", 0.5, [])
    with pytest.raises(ConfigError, match="--statistics-epsilon is a statistics job's"):
        terms.job_settings(["--statistics-epsilon", "1"])


def test_the_standing_commands_flags_split_into_job_defaults_and_infrastructure() -> None:
    defaults, infrastructure = terms.split_infrastructure(["--standing", "--operator-token", "x" * 16, "--address", "0.0.0.0:1",
                                                           "--allow-insecure", "--model", "tiny_cnn", "--rounds=3"])
    assert defaults == ["--model", "tiny_cnn", "--rounds=3"]
    assert infrastructure == ["--address", "0.0.0.0:1", "--allow-insecure"]


def test_the_job_store_keeps_the_queue_across_a_restart(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    first = store.submit("train", ["--rounds", "2"], "", 2)
    second = store.submit("statistics", [], "rounds = 1\n", 0)
    store.update(first, state="running")
    again = JobStore(tmp_path)  # what a coordinator killed with -9 finds
    assert [j.id for j in again.all()] == ["job-0001", "job-0002"] and again.toml_path(second.id).read_text() == "rounds = 1\n"
    assert again.next_to_run().id == first.id  # the running one resumes first
    again.update(again.get(first.id), state="done")
    assert again.next_to_run().id == second.id and again.get(first.id).ended > 0


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12))
def test_a_sites_statistics_are_bounded_on_the_wire(counts: list[float]) -> None:
    names = [f"c{i}" for i in range(len(counts))]
    message = pb.JobAnswer(offer_id="o", accept=True, statistics=pb.SiteStatistics(examples=3, class_names=names, counts=counts))
    sane = all(math.isfinite(c) and 0 <= c <= wire_jobs.MAX_COUNT for c in counts)
    if sane:
        answer = wire_jobs.answer_from_proto(message)
        assert answer.statistics == SiteStatistics(3.0, tuple(names), tuple(counts))
    else:
        with pytest.raises(CorruptError):
            wire_jobs.answer_from_proto(message)


def test_a_refusal_reason_and_class_names_are_capped() -> None:
    with pytest.raises(CorruptError, match="at most 300"):
        wire_jobs.answer_from_proto(pb.JobAnswer(offer_id="o", reason="x" * 301))
    twice = pb.JobAnswer(offer_id="o", accept=True, statistics=pb.SiteStatistics(class_names=["a", "a"], counts=[1, 2]))
    with pytest.raises(CorruptError, match="named twice"):
        wire_jobs.answer_from_proto(twice)


def test_an_evaluation_offer_meets_the_policy_for_every_model_it_names() -> None:
    models = (ModelToEvaluate("job-0001", "tiny_cnn", "0" * 64, 10), ModelToEvaluate("job-0002", "evil.module:build", "1" * 64, 10))
    offer = JobOffer("o", "job-0003", "evaluate", models=models)
    assert "job-0002: the model is evil.module:build, a module it does not allow" in SitePolicy().refuses(offer)
    assert "job-0001: model tiny_cnn is not one it trains" in SitePolicy(models=("resnet18",)).refuses(offer)
    assert SitePolicy(plugins=("evil",)).refuses(offer) == ""


@pytest.mark.parametrize(("loss", "accuracy", "examples", "ok"), [
    (0.5, 0.9, 10, True), (math.nan, math.nan, 0, True),  # an empty held-out slice measures nothing
    (-1.0, 0.5, 10, False), (0.5, 1.5, 10, False), (math.inf, 0.5, 10, False), (math.nan, 0.5, 10, False),
])
def test_a_sites_evaluations_are_bounded_on_the_wire(loss: float, accuracy: float, examples: int, ok: bool) -> None:
    message = pb.JobAnswer(offer_id="o", accept=True, evaluations=[pb.SiteEvaluation(model="job-0001", loss=loss, accuracy=accuracy,
                                                                                    examples=examples)])
    if ok:
        assert wire_jobs.answer_from_proto(message).evaluations[0].examples == examples
    else:
        with pytest.raises(CorruptError, match="site evaluation"):
            wire_jobs.answer_from_proto(message)


def test_an_evaluation_job_names_the_jobs_it_evaluates() -> None:
    assert terms.job_settings(["--kind", "evaluate", "--evaluate", "job-0001,job-0002"]).evaluate == ("job-0001", "job-0002")
    for flags in (["--kind", "evaluate"], ["--evaluate", "job-0001"]):
        with pytest.raises(ConfigError, match="--evaluate JOB"):
            terms.job_settings(flags)


def test_a_shared_head_becomes_a_personal_model_only_if_it_fits_exactly() -> None:
    import torch

    from fedtl.common import tensorcodec
    from fedtl.common.models import build_network
    from fedtl.server.standing.evaluation import personal_model

    net = build_network("tiny_cnn", 10, "none", seed=0)
    meta = {"model": "tiny_cnn", "num_classes": "10", "image_size": "32", "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5"}
    final = bytes(tensorcodec.encode(net.module.state_dict(), meta))
    head = {k: torch.full_like(v, 0.25) for k, v in net.stages[-1][1].state_dict().items()}
    built = tensorcodec.decode(personal_model(final, bytes(tensorcodec.encode(head, {})), "a"))
    assert built.metadata["personal_head_of"] == "a" and built.metadata["model"] == "tiny_cnn"
    rebuilt = build_network("tiny_cnn", 10, "none", seed=0)
    rebuilt.module.load_state_dict(built.tensors)
    assert all(torch.equal(v, head[k]) for k, v in rebuilt.stages[-1][1].state_dict().items())
    wrong = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.dim() > 1 else v for k, v in head.items()}
    with pytest.raises(RuntimeError):
        personal_model(final, bytes(tensorcodec.encode(wrong, {})), "a")
    with pytest.raises(ValueError, match="not finite"):
        personal_model(final, bytes(tensorcodec.encode({k: v * math.nan for k, v in head.items()}, {})), "a")
    with pytest.raises(ConfigError, match="--personal belongs to an evaluation job"):
        terms.job_settings(["--personal"])


def test_a_site_builds_no_model_other_than_the_offer_named(tmp_path: Path) -> None:
    """The policy decided on the offer's architecture: a file that names another is refused before anything is built."""
    import torch

    from fedtl.client.cross_evaluation import evaluate_models
    from fedtl.common import tensorcodec
    from fedtl.common.data import open_split
    from fedtl.common.errors import DataUnavailable
    from fedtl.common.models import build_network

    net = build_network("tiny_cnn", 10, "none", seed=0)
    meta = {"model": "tiny_cnn", "num_classes": "10", "image_size": "32", "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5"}
    blob = bytes(tensorcodec.encode(net.module.state_dict(), meta))
    source = open_split("synthetic:60", "train", tmp_path)
    honest = JobOffer("o", "j", "evaluate", models=(ModelToEvaluate("job-0001", "tiny_cnn", "0" * 64, len(blob)),),
                      data=DataAssignment(scheme="none", holdout_fraction=0.5))
    scores, heads = evaluate_models(honest, source, lambda ref: memoryview(blob), torch.device("cpu"), (), "--data synthetic:60")
    assert scores[0].model == "job-0001" and scores[0].examples > 0 and heads == ()
    lying = JobOffer("o", "j", "evaluate", models=(ModelToEvaluate("job-0001", "resnet18", "0" * 64, len(blob)),))
    with pytest.raises(DataUnavailable, match="the offer said 'resnet18'"):
        evaluate_models(lying, source, lambda ref: memoryview(blob), torch.device("cpu"), (), "--data synthetic:60")
