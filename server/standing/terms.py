"""A submitted job -> the ServerConfig it runs with, and the terms it is offered to sites on.

A job's settings, later ones winning: the standing command's own flags (every job's defaults), the job file, the job's
flags, then the standing coordinator's infrastructure, which no job may set: where it listens, its TLS and site
credentials, its dashboard, its resource bounds, and the job's own run folder.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fedtl.common import config_file
from fedtl.common.cli import raising_flag_errors
from fedtl.common.config import DataAssignment
from fedtl.common.errors import ConfigError
from fedtl.common.jobs import JOB_KINDS, MAX_MODELS, JobOffer, ModelToEvaluate
from fedtl.common.plugin_refs import is_plugin
from fedtl.server.config import ServerConfig, build_parser, from_namespace
from fedtl.server.standing.settings import OPERATOR_TOKEN_ENV

# The coordinator's, not a job's: who may connect and how, what it serves, what bounds a peer, where runs live.
INFRASTRUCTURE = frozenset({
    "--address", "--run-dir", "--output", "--resume", "--log-level", "--log-format", "--data-cache", "--device",
    "--tls-cert", "--tls-key", "--tls-client-ca", "--token", "--tokens-file", "--allow-insecure",
    "--max-clients", "--max-clients-per-address", "--join-rate", "--join-rate-total", "--stall-timeout", "--min-transfer-rate",
    "--max-concurrent-uploads", "--max-concurrent-downloads", "--max-aggregate-memory",
    "--dashboard", "--dashboard-token", "--dashboard-hosts", "--dashboard-linger", "--dashboard-stream-seconds",
    "--dashboard-insecure", "--metrics", "--metrics-open", "--tensorboard",
    "--standing", "--operator-token", "--operator-cert-name", "--allow-job-plugins", "--config", "--print-config", "--help", "-h",
})
JOB_DEFAULTS = ("--join-grace", "0")  # the sites are connected, and the job starts once they have answered its offer
STANDING_ONLY = ("--standing", "--operator-token", "--operator-cert-name", "--allow-job-plugins")


@dataclass(frozen=True)
class JobSettings:
    kind: str
    statistics_epsilon: float  # a statistics job: each site's counts with Gaussian noise of this ε (0: exact)
    flags: list[str]  # the rest: `fedtl server` flags
    evaluate: tuple[str, ...] = ()  # an evaluation job: the training jobs whose final models every site evaluates
    personal: bool = False  # an evaluation job also evaluates the personal heads sites share


def job_settings(flags: list[str]) -> JobSettings:
    """The job's own flags (--kind, --statistics-epsilon) taken out of a submission's flags."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--kind", choices=JOB_KINDS, default="train")
    parser.add_argument("--statistics-epsilon", type=float, default=0.0)
    parser.add_argument("--evaluate", default="")
    parser.add_argument("--personal", action="store_true")
    try:
        known, rest = parser.parse_known_args(flags)
    except SystemExit:
        raise ConfigError(f"--kind must be one of {', '.join(JOB_KINDS)}, --statistics-epsilon a number") from None
    if not known.statistics_epsilon >= 0 or (known.statistics_epsilon and known.kind != "statistics"):
        raise ConfigError("--statistics-epsilon is a statistics job's (--kind statistics), and >= 0")
    evaluate = tuple(j for j in known.evaluate.split(",") if j)
    if (known.kind == "evaluate") != bool(evaluate) or len(evaluate) > MAX_MODELS:
        raise ConfigError(f"an evaluation job (--kind evaluate) names the training jobs whose final models every site evaluates: "
                          f"--evaluate JOB[,JOB...] (at most {MAX_MODELS}); other kinds take no --evaluate")
    for flag in rest:
        name = flag.split("=", 1)[0]
        if name in INFRASTRUCTURE:
            raise ConfigError(f"{name} is the standing coordinator's own setting; a job cannot set it (docs/jobs.md)")
    if known.personal and known.kind != "evaluate":
        raise ConfigError("--personal belongs to an evaluation job (--kind evaluate): it asks sites for their personal heads")
    return JobSettings(known.kind, known.statistics_epsilon, rest, evaluate, known.personal)


def split_infrastructure(argv: list[str]) -> tuple[list[str], list[str]]:
    """The standing command's flags (its --config expanded) as (job defaults, infrastructure)."""
    parser = build_parser()
    actions = {o: a for a in parser._actions for o in a.option_strings}
    with raising_flag_errors():
        tokens = config_file.expand(parser, list(argv), "server")
    defaults: list[str] = []
    infrastructure: list[str] = []
    i = 0
    while i < len(tokens):
        name, has_value, _ = tokens[i].partition("=")
        action = actions.get(name)
        takes = action is not None and action.nargs != 0 and not has_value
        group = tokens[i:i + (2 if takes else 1)]
        i += len(group)
        if name in STANDING_ONLY or name in ("--config", "--print-config"):
            continue  # the standing coordinator's own; --config is expanded into the tokens already
        (infrastructure if name in INFRASTRUCTURE else defaults).extend(group)
    return defaults, infrastructure


def job_config(defaults: list[str], infrastructure: list[str], job: JobSettings, toml: Path | None, run_dir: Path,
               env: Mapping[str, str], allow_plugins: bool) -> ServerConfig:
    """The job's ServerConfig, parsed and checked like `fedtl server`'s; a bad job fails here, at submission."""
    parser = build_parser()
    with raising_flag_errors():
        from_file = config_file.expand(parser, ["--config", str(toml)], "server")[:-2] if toml is not None else []
        for flag in from_file:
            if flag.split("=", 1)[0] in INFRASTRUCTURE:
                raise ConfigError(f"the job file sets {flag.split('=', 1)[0]}: the standing coordinator's own setting; a job cannot set it")
        argv = [*JOB_DEFAULTS, *defaults, *from_file, *job.flags, *infrastructure, "--run-dir", str(run_dir), "--resume", "auto"]
        namespace = parser.parse_args(argv)
        cfg = from_namespace(namespace, {k: v for k, v in env.items() if k != OPERATOR_TOKEN_ENV})  # the job is no standing coordinator
        cfg = replace(cfg, effective_config=config_file.render(parser, namespace, "server"))
    if not allow_plugins and (cfg.metric_aggregation or is_plugin(cfg.strategy.rule)):
        raise ConfigError("this job names code for the coordinator to run (--aggregation package.module:Class or --metric-aggregation); "
                          "the standing coordinator runs none unless started with --allow-job-plugins")
    return cfg


def offer(cfg: ServerConfig, job_id: str, job: JobSettings, data: DataAssignment | None = None,
          models: tuple[ModelToEvaluate, ...] = ()) -> JobOffer:
    """What the job will ask of a site: the most any of its rounds asks (a --round-config may vary them)."""
    trains = [cfg.train_for(r) for r in range(1, cfg.schedule.rounds + 1)] or [cfg.train]
    record_dp = all(t.dp_clip > 0 for t in trains)
    return JobOffer(
        offer_id=secrets.token_hex(16), job_id=job_id, kind=job.kind, model=cfg.model if job.kind == "train" else "",
        rounds=cfg.schedule.rounds if job.kind == "train" else 0, local_epochs=max(t.local_epochs for t in trains),
        max_steps=max(t.max_steps for t in trains), train_fn=cfg.train.train_fn, evaluate_fn=cfg.train.evaluate_fn,
        dp_epsilon=cfg.train.dp_epsilon if record_dp else 0.0, secure_aggregation=cfg.strategy.secure is not None,
        statistics_epsilon=job.statistics_epsilon, data=data, record_dp=record_dp and job.kind == "train", models=models,
    )
