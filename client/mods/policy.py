"""A site's policy: what its data may be used for, whatever a coordinator sends (docs/jobs.md).

A standing coordinator offers each job's terms first (JobOffer) and the site answers with the first rule they break;
the same rules then bind every task of a job it accepted, so terms that understate the job gain nothing. A one-run
coordinator's tasks meet the same rules through `admit`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fedtl.client.mods.base import ClientMod
from fedtl.common.config import TrainTask
from fedtl.common.errors import ConfigError, PrivacyRefused
from fedtl.common.jobs import JOB_KINDS, JobOffer
from fedtl.common.plugin_refs import is_allowed
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--accept-jobs", default=",".join(JOB_KINDS), metavar="KIND,...", help="the kinds of job this site takes part in "
                   f"({', '.join(JOB_KINDS)})")
    g.add_argument("--accept-models", default="", metavar="NAME,...", help="the models this site trains ('': any; the coordinator's "
                   "own code as the model also needs --allow-plugin)")
    g.add_argument("--require-secure-aggregation", action="store_true", help="train only where updates are aggregated securely "
                   "(--secure-aggregation, or two-server validated aggregation)")
    g.add_argument("--require-dp", action="store_true", help="train only under record-level DP-SGD (with --max-epsilon: at most "
                   "that ε per job, and over all runs)")
    g.add_argument("--share-personal-head", action="store_true", help="in a cross-site evaluation that asks (--personal), send "
                   "the personal head trained here (--personal-epochs) for the other sites to evaluate on their data")
    g.add_argument("--max-job-rounds", type=int, default=0, help="take part in jobs of at most this many rounds (0: any)")
    g.add_argument("--max-job-epochs", type=int, default=0, help="at most this many local epochs over a whole job: rounds x "
                   "local epochs (0: any)")


SECTION = Section("policy", "site policy (docs/jobs.md)", add_flags)


@dataclass(frozen=True)
class SitePolicy:
    kinds: tuple[str, ...] = JOB_KINDS
    models: tuple[str, ...] = ()  # empty: any
    secure_aggregation: bool = False
    record_dp: bool = False
    max_epsilon: float = 0.0  # the owner's --max-epsilon (also a job's cap under --require-dp)
    max_rounds: int = 0
    max_epochs: int = 0
    plugins: tuple[str, ...] = ()  # --allow-plugin modules
    share_personal: bool = False  # --share-personal-head

    def refuses(self, offer: JobOffer) -> str:
        """The first rule `offer` breaks ("": none)."""
        if offer.kind not in self.kinds:
            return f"it takes part only in {', '.join(self.kinds)} jobs (--accept-jobs), not {offer.kind}"
        if offer.kind == "statistics":
            if self.max_epsilon and not offer.statistics_epsilon:
                return (f"it releases statistics only with noise (its --max-epsilon {self.max_epsilon:g}); ask for "
                        "--statistics-epsilon")
            return ""
        if offer.kind == "evaluate":
            for model in offer.models:
                if rule := self.refuses_model(model.architecture) or self.refuses_plugin(model.architecture, "the model"):
                    return f"{model.name}: {rule}"
            return ""
        if self.models and offer.model not in self.models:
            return f"model {offer.model} is not one it trains (--accept-models {','.join(self.models)})"
        for flag, ref in (("--train-fn", offer.train_fn), ("--evaluate-fn", offer.evaluate_fn)):
            if ref and not is_allowed(ref, self.plugins):
                return f"the job runs {ref} ({flag}), a module it does not allow (--allow-plugin)"
        if self.secure_aggregation and not offer.secure_aggregation:
            return "it trains only under secure aggregation (--require-secure-aggregation)"
        if (self.record_dp or self.max_epsilon) and not offer.record_dp:
            return "it trains only under record-level DP (--require-dp or --max-epsilon)"
        if self.max_epsilon and offer.dp_epsilon > self.max_epsilon:
            return f"the job's ε {offer.dp_epsilon:g} is over its --max-epsilon {self.max_epsilon:g}"
        if self.max_rounds and offer.rounds > self.max_rounds:
            return f"the job has {offer.rounds} rounds, over its --max-job-rounds {self.max_rounds}"
        if self.max_epochs and offer.rounds * offer.local_epochs > self.max_epochs:
            return (f"the job asks {offer.rounds} rounds x {offer.local_epochs} local epochs, over its --max-job-epochs "
                    f"{self.max_epochs}")
        return ""

    def refuses_plugin(self, ref: str, what: str) -> str:
        return "" if is_allowed(ref, self.plugins) else f"{what} is {ref}, a module it does not allow (--allow-plugin)"

    def refuses_model(self, model: str) -> str:
        return f"model {model} is not one it trains (--accept-models {','.join(self.models)})" if self.models and model not in self.models else ""


def policy(a: argparse.Namespace, max_epsilon: float) -> SitePolicy:
    kinds = tuple(k for k in a.accept_jobs.split(",") if k)
    if not kinds or any(k not in JOB_KINDS for k in kinds):
        raise ConfigError(f"--accept-jobs {a.accept_jobs!r}: a comma-separated list of {', '.join(JOB_KINDS)}")
    if a.max_job_rounds < 0 or a.max_job_epochs < 0:
        raise ConfigError("--max-job-rounds and --max-job-epochs must be >= 0")
    return SitePolicy(kinds, tuple(m for m in a.accept_models.split(",") if m), a.require_secure_aggregation, a.require_dp, max_epsilon,
                      a.max_job_rounds, a.max_job_epochs, tuple(a.allow_plugin), a.share_personal_head)


class SitePolicyMod(ClientMod):
    """Every task of every job meets the policy, whatever its offer said."""

    def __init__(self, site: SitePolicy) -> None:
        self.site = site

    def admit(self, task: TrainTask) -> None:
        s, c = self.site, task.config
        if c.statistics:
            return  # a closed-form head's statistics round: privacy and secure aggregation are checked by their own mods
        rule = ""
        if s.secure_aggregation and task.secagg is None and task.validated is None:
            rule = "it trains only under secure aggregation (--require-secure-aggregation)"
        elif s.record_dp and not c.dp_clip:
            rule = "it trains only under record-level DP (--require-dp)"
        elif s.max_rounds and task.round > s.max_rounds:
            rule = f"round {task.round} is past its --max-job-rounds {s.max_rounds}"
        elif s.max_epochs and task.round * c.local_epochs > s.max_epochs:
            rule = f"round {task.round} of {c.local_epochs} local epoch(s) would pass its --max-job-epochs {s.max_epochs}"
        if rule:
            raise PrivacyRefused(f"this site's policy refuses round {task.round}: {rule}")
