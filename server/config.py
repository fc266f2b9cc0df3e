"""`fedtl server` flags -> one frozen ServerConfig, checked completely before anything heavy runs.

Each section's flags and checks live with its feature (server/flags.py lists them); this module composes their
settings. Every bad value and every combination that cannot work raises a ConfigError naming the flag and the fix, at
parse time: not after data and weights have loaded, and never as a round that fails.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedtl.common import config_file
from fedtl.common.cli import check_folder
from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError
from fedtl.server.flags import build_parser
from fedtl.server.observe.settings import ObserveSettings
from fedtl.server.observe.settings import from_namespace as observe_settings
from fedtl.server.round_config import schedule as round_schedule
from fedtl.server.settings import data, model, rounds, security, training, transport
from fedtl.server.settings.data import PartitionPlan
from fedtl.server.settings.rounds import Schedule
from fedtl.server.settings.statistics import StatisticsPlan, after_head, private_rounds
from fedtl.server.settings.statistics import settings as statistics_settings
from fedtl.server.settings.transport import Limits
from fedtl.server.standing.settings import StandingSettings
from fedtl.server.standing.settings import settings as standing_settings
from fedtl.server.strategies import StrategySettings
from fedtl.server.strategies.settings import strategy_settings

__all__ = ["Limits", "PartitionPlan", "Schedule", "ServerConfig", "build_parser", "parse_args"]


@dataclass(frozen=True)
class ServerConfig:
    address: str
    run_dir: Path
    output: Path | None
    resume: str  # auto | never
    keep_round_models: bool
    # model and data
    model: str
    weights: str
    train_policy: str
    fedbn: bool
    image_size: int
    num_classes: int  # 0: from the test split's classes
    data: str
    data_cache: Path
    cache_dir: Path | None  # features kept by digest across runs (None: not kept)
    test_per_class: int
    validation_per_class: int  # held back from the test split to pick the best model (0: none)
    validation_asked: bool  # --validation-per-class was given: a split without room for it is an error, not a skip
    eval_batch_size: int
    # the run's parts
    schedule: Schedule
    partitions: PartitionPlan
    train: TrainConfig
    strategy: StrategySettings
    # transport and security
    compression: str
    upload_codec: str
    download_codec: str
    chunk_bytes: int
    limits: Limits
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    token: str | None
    tokens_file: Path | None
    allow_insecure: bool
    # runtime
    device: str
    seed: int
    log_level: str
    log_format: str
    observe: ObserveSettings
    metric_aggregation: str = ""  # --metric-aggregation package.module:function ("": none)
    effective_config: str = ""  # the flags and config file as TOML (written into the run folder)
    round_train: dict[int, TrainConfig] = field(default_factory=dict)  # --round-config: rounds whose recipe differs
    statistics: StatisticsPlan = StatisticsPlan()  # rounds that collect statistics: a closed-form head, BatchNorm's
    standing: StandingSettings | None = None  # set: a standing coordinator that takes jobs (server/standing)

    def train_for(self, round_number: int) -> TrainConfig:
        return self.round_train.get(round_number, self.train)


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServerConfig:
    """Flags, after the settings of --config FILE.toml (the flags win); --print-config prints the result and exits."""
    env = dict(os.environ) if env is None else env
    return config_file.parse(build_parser(), argv, "server", lambda namespace: from_namespace(namespace, env))


def from_namespace(a: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    train = training.train_config(a)
    schedule = rounds.schedule(a)
    partitions = data.partitions(a)
    strategy = strategy_settings(a, train)
    model.check(a, train)
    limits = transport.limits(a)
    token = security.token(a, env)
    standing = standing_settings(a, env, security.site_tokens(token, a.tokens_file))
    check_folder("--run-dir", a.run_dir)
    check_folder("--data-cache", a.data_cache)
    if a.output is not None and a.output.is_dir():
        raise ConfigError(f"--output {a.output}: is a folder; name the model file to write, e.g. {a.output / 'model.safetensors'}")
    statistics = statistics_settings(a, train, strategy)
    strategy, train = after_head(a, statistics, strategy), private_rounds(a, statistics, train)
    return ServerConfig(
        address=a.address, run_dir=a.run_dir, output=a.output, resume=a.resume, keep_round_models=a.keep_round_models,
        model=a.model, weights=a.weights, train_policy=a.train_policy, fedbn=a.fedbn, image_size=a.image_size,
        num_classes=a.num_classes, data=a.data, data_cache=a.data_cache, cache_dir=data.cache_dir(a), test_per_class=a.test_per_class,
        validation_per_class=data.validation_per_class(a)[0], validation_asked=data.validation_per_class(a)[1],
        eval_batch_size=a.eval_batch_size, schedule=schedule, partitions=partitions, train=train, strategy=strategy,
        compression=a.compression, upload_codec=a.upload_codec, download_codec=a.download_codec, chunk_bytes=a.chunk_bytes, limits=limits,
        tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca, token=token, tokens_file=a.tokens_file,
        allow_insecure=a.allow_insecure, device=a.device, seed=a.seed, log_level=a.log_level, log_format=a.log_format,
        observe=observe_settings(a, env, tls=a.tls_cert is not None, allow_insecure=a.allow_insecure),
        round_train=round_schedule(a.round_config, train, schedule.rounds) if a.round_config else {},
        metric_aggregation=rounds.metric_aggregation(a), statistics=statistics, standing=standing,
    )
