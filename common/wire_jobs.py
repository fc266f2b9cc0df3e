"""A standing federation's messages <-> protobuf (offers, answers, job status), beside wire.py.

Every string and list a peer sends is bounded here: a site's refusal at 300 characters, its statistics at MAX_CLASSES
classes of capped names with finite, non-negative counts, a job's flags at MAX_FLAGS of MAX_FLAG characters.
"""

from __future__ import annotations

import math

from fedtl.common.config import DataAssignment
from fedtl.common.errors import CorruptError
from fedtl.common.jobs import (
    JOB_KINDS,
    MAX_CLASSES,
    MAX_MODELS,
    MAX_REASON,
    JobAnswer,
    JobOffer,
    JobStatus,
    ModelToEvaluate,
    PersonalHead,
    SiteEvaluation,
    SiteStatistics,
)
from fedtl.protos import federation_pb2 as pb

MAX_ID = 64  # characters of an offer or job id
MAX_CLASS_NAME = 128
MAX_FLAGS, MAX_FLAG, MAX_TOML = 512, 4096, 1 << 20  # what one submission may carry
MAX_COUNT = 1e12  # no site holds more examples than this; a larger count is not a count


def offer_to_proto(o: JobOffer, data: pb.DataAssignment | None) -> pb.JobOffer:
    models = [pb.ModelToEvaluate(name=m.name, architecture=m.architecture, sha256=m.sha256, total_bytes=m.total_bytes) for m in o.models]
    return pb.JobOffer(data=data, models=models, collect_personal=o.collect_personal, offer_id=o.offer_id, job_id=o.job_id, kind=o.kind, model=o.model, rounds=o.rounds, local_epochs=o.local_epochs,
                       max_steps=o.max_steps, train_fn=o.train_fn, evaluate_fn=o.evaluate_fn, dp_epsilon=o.dp_epsilon,
                       secure_aggregation=o.secure_aggregation, statistics_epsilon=o.statistics_epsilon,
                       record_dp=o.record_dp)


def offer_from_proto(m: pb.JobOffer, data: DataAssignment | None) -> JobOffer:
    if m.kind not in JOB_KINDS:
        raise CorruptError(f"a job offer of kind {m.kind[:32]!r}; this site knows {', '.join(JOB_KINDS)} (is it older than the server?)")
    for value in (m.offer_id, m.job_id):
        _short("job offer id", value, MAX_ID)
    if len(m.models) > MAX_MODELS:
        raise CorruptError(f"an evaluation job offers {len(m.models)} models; at most {MAX_MODELS}")
    models = tuple(ModelToEvaluate(_short("model name", e.name, MAX_ID), _short("architecture", e.architecture, 128),
                                   _short("sha256", e.sha256, 64), e.total_bytes) for e in m.models)
    return JobOffer(m.offer_id, m.job_id, m.kind, _short("model", m.model, 128), m.rounds, m.local_epochs, m.max_steps,
                    _short("train_fn", m.train_fn, 256), _short("evaluate_fn", m.evaluate_fn, 256), m.dp_epsilon, m.secure_aggregation,
                    m.statistics_epsilon, data, m.record_dp, models, m.collect_personal)


def answer_to_proto(a: JobAnswer) -> pb.JobAnswer:
    message = pb.JobAnswer(offer_id=a.offer_id, accept=a.accept, reason=a.reason[:MAX_REASON])
    if a.statistics is not None:
        s = a.statistics
        message.statistics.CopyFrom(pb.SiteStatistics(examples=int(round(max(0.0, s.examples))), class_names=list(s.class_names),
                                                      counts=list(s.counts)))
    message.evaluations.extend(pb.SiteEvaluation(model=e.model, loss=e.loss, accuracy=e.accuracy, examples=e.examples)
                               for e in a.evaluations)
    message.personal_heads.extend(pb.PersonalHead(model=h.model, tensors=h.tensors) for h in a.personal_heads)
    return message


def answer_from_proto(m: pb.JobAnswer) -> JobAnswer:
    """A site's answer, bounded: whatever it claims, the coordinator keeps a short reason and sane counts."""
    _short("offer id", m.offer_id, MAX_ID)
    _short("a refusal's reason", m.reason, MAX_REASON)
    statistics = None
    if m.HasField("statistics"):
        s = m.statistics
        if len(s.class_names) != len(s.counts) or len(s.counts) > MAX_CLASSES:
            raise CorruptError(f"site statistics: {len(s.class_names)} class names for {len(s.counts)} counts (at most {MAX_CLASSES})")
        names = tuple(_short("class name", name, MAX_CLASS_NAME) for name in s.class_names)
        if len(set(names)) != len(names):
            raise CorruptError("site statistics: a class is named twice")
        if not all(math.isfinite(c) and 0 <= c <= MAX_COUNT for c in s.counts) or s.examples > MAX_COUNT:
            raise CorruptError("site statistics: counts must be finite, non-negative and at most 1e12")
        statistics = SiteStatistics(float(s.examples), names, tuple(float(c) for c in s.counts))
    if len(m.evaluations) > MAX_MODELS:
        raise CorruptError(f"an answer with {len(m.evaluations)} evaluations; at most {MAX_MODELS}")
    evaluations = []
    for e in m.evaluations:  # an empty held-out slice evaluates to NaN: no examples, nothing measured
        if e.examples > MAX_COUNT or (e.examples and not (math.isfinite(e.loss) and e.loss >= 0 and 0 <= e.accuracy <= 1)):
            raise CorruptError("site evaluation: a loss must be finite and >= 0, an accuracy in [0, 1]")
        evaluations.append(SiteEvaluation(_short("model name", e.model, MAX_ID), e.loss, e.accuracy, e.examples))
    if len(m.personal_heads) > MAX_MODELS:
        raise CorruptError(f"an answer with {len(m.personal_heads)} personal heads; at most {MAX_MODELS}")
    heads = tuple(PersonalHead(_short("model name", h.model, MAX_ID), bytes(h.tensors)) for h in m.personal_heads)
    return JobAnswer(m.offer_id, m.accept, m.reason, statistics, tuple(evaluations), heads)


def status_to_proto(s: JobStatus) -> pb.JobStatus:
    return pb.JobStatus(job_id=s.job_id, kind=s.kind, state=s.state, detail=s.detail, submitted=s.submitted, started=s.started,
                        ended=s.ended, rounds=s.rounds, folder=s.folder)


def status_from_proto(m: pb.JobStatus) -> JobStatus:
    return JobStatus(m.job_id, m.kind, m.state, m.detail, m.submitted, m.started, m.ended, m.rounds, m.folder)


def submission_from_proto(m: pb.JobSubmission) -> tuple[list[str], str]:
    """(flags, TOML text) of a submission, bounded before anything parses them."""
    if len(m.flags) > MAX_FLAGS or any(len(flag) > MAX_FLAG for flag in m.flags) or len(m.toml) > MAX_TOML:
        raise CorruptError(f"a job is at most {MAX_FLAGS} flags of {MAX_FLAG} characters and a {MAX_TOML >> 20} MiB job file")
    return list(m.flags), m.toml


def _short(what: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise CorruptError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    return value
