"""A standing federation's records (docs/jobs.md): the terms a job is offered on, a site's answer, a job's status.

Both sides speak them: the coordinator offers (server/standing/), the site's policy decides (client/mods/policy.py), the
operator's tools read the status (server/standing/cli.py); common/wire_jobs.py converts them to and from protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedtl.common.config import DataAssignment, Instruction

JOB_KINDS = ("train", "statistics", "evaluate")  # a training run; per-site counts and label histograms; cross-site evaluation
FINAL_STATES = ("done", "failed", "stopped")
MAX_REASON = 300  # characters of a site's refusal, as the job's log shows it
MAX_CLASSES = 1000  # classes a site may report in a statistics job
MAX_MODELS = 64  # models one evaluation job may offer


@dataclass(frozen=True)
class ModelToEvaluate:
    """A final model file of an earlier job, for each site to evaluate on its own held-out slice."""

    name: str  # the job it comes from: a row of the matrix
    architecture: str
    sha256: str
    total_bytes: int


@dataclass(frozen=True)
class JobOffer:
    """What a job will ask of a site, for its policy to decide on before it joins (the policy binds every task too)."""

    offer_id: str
    job_id: str
    kind: str
    model: str = ""
    rounds: int = 0
    local_epochs: int = 0
    max_steps: int = 0
    train_fn: str = ""
    evaluate_fn: str = ""
    dp_epsilon: float = 0.0  # record-level DP-SGD's ε over the job (0: none, or a fixed noise multiplier)
    secure_aggregation: bool = False
    statistics_epsilon: float = 0.0  # a statistics job: Gaussian noise spending this ε on each site's counts (0: exact)
    data: DataAssignment | None = None  # a statistics job: the shard to count (a training job's Welcome assigns it)
    record_dp: bool = False  # every round trains under record-level DP-SGD
    models: tuple[ModelToEvaluate, ...] = ()  # an evaluation job's models
    collect_personal: bool = False  # an evaluation job asks each site for its personal heads of these models


SiteInstruction = Instruction | JobOffer  # what a standing coordinator's session stream carries


@dataclass(frozen=True)
class SiteStatistics:
    """A site's answer to a statistics job: how much data of each class its shard holds (noised when the job asks)."""

    examples: float
    class_names: tuple[str, ...]
    counts: tuple[float, ...]


@dataclass(frozen=True)
class SiteEvaluation:
    """One model on a site's held-out slice."""

    model: str
    loss: float
    accuracy: float
    examples: int


@dataclass(frozen=True)
class PersonalHead:
    """A site's own head, trained on an evaluated model's backbone, for the other sites to evaluate (only if it allows)."""

    model: str
    tensors: bytes  # a safetensors blob


@dataclass(frozen=True)
class JobAnswer:
    offer_id: str
    accept: bool
    reason: str = ""  # a refusal names the rule of the site's policy
    statistics: SiteStatistics | None = None
    evaluations: tuple[SiteEvaluation, ...] = ()
    personal_heads: tuple[PersonalHead, ...] = ()


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    kind: str
    state: str
    detail: str = ""
    submitted: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    rounds: int = 0
    folder: str = ""
