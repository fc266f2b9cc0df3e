"""`python -m server` flags -> one frozen ServerConfig, checked completely before anything heavy runs.

Every bad value and every combination that cannot work raises a ConfigError naming the flag and
the fix, at parse time: not after data and weights have loaded, and never as a round that fails.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from fedtl.common import config_file
from fedtl.common.chunks import DEFAULT_CHUNK_BYTES
from fedtl.common.cli import check_file, check_folder
from fedtl.common.config import TrainConfig
from fedtl.common.devices import check_device_text
from fedtl.common.errors import ConfigError
from fedtl.common.partition import SCHEMES
from fedtl.common.plugin_refs import is_plugin
from fedtl.server.flags import build_parser
from fedtl.server.observe.settings import ObserveSettings
from fedtl.server.observe.settings import from_namespace as observe_settings
from fedtl.server.round_config import schedule as round_schedule
from fedtl.server.strategies import StrategySettings
from fedtl.server.strategy_flags import strategy_settings

__all__ = ["Limits", "PartitionPlan", "Schedule", "ServerConfig", "build_parser", "parse_args"]


@dataclass(frozen=True)
class Schedule:
    """How rounds run: who is selected, how long rounds wait, when to evaluate."""

    rounds: int
    min_clients: int
    clients_per_round: int  # 0: every connected client (unless fraction)
    fraction: float  # > 0: this share of the connected clients
    min_fit_clients: int
    over_select: float
    round_timeout: float
    round_retries: int
    wait_timeout: float  # 0: wait for min_clients forever
    join_grace: float
    finish_grace: float
    eval_every: int
    client_eval_every: int
    max_examples: int


@dataclass(frozen=True)
class PartitionPlan:
    """How the shared training split is divided among clients (the registry applies it)."""

    num_partitions: int  # 0: fixed when round 1 starts, to the clients connected then
    scheme: str
    alpha: float
    classes_per_client: int
    seed: int
    holdout_fraction: float
    per_class_limit: int


@dataclass(frozen=True)
class Limits:
    """What any one peer, or all of them, may hold: sessions, joins, transfer slots, and how slowly a transfer may move."""

    max_clients: int  # 0: no limit
    join_rate: float  # joins a second from one address (0: no limit)
    join_rate_total: float  # joins a second in all (0: no limit)
    max_concurrent_uploads: int
    max_concurrent_downloads: int
    stall_timeout: float  # a transfer must show progress within this many seconds
    min_transfer_rate: float  # bytes a second a transfer must average once stall_timeout has passed (0: no rate)
    max_aggregate_bytes: int  # what order-based rules may keep for one round's updates (RAM, then a file in the run dir)


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
    eval_batch_size: int
    root_data: str | None  # fltrust: the coordinator's clean root set
    root_per_class: int
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

    def train_for(self, round_number: int) -> TrainConfig:
        return self.round_train.get(round_number, self.train)


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServerConfig:
    """Flags, after the settings of --config FILE.toml (the flags win); --print-config prints the result and exits."""
    env = dict(os.environ) if env is None else env
    return config_file.parse(build_parser(), argv, "server", lambda namespace: from_namespace(namespace, env))


def from_namespace(a: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    train = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)})
    if train.private and not train.dp_rounds:  # clients spread --dp-epsilon over the run
        train = replace(train, dp_rounds=a.rounds)
    schedule = _schedule(a)
    partitions = _partitions(a)
    strategy = strategy_settings(a, train)
    _check_model(a, train)
    token = a.token or env.get("FEDTL_TOKEN") or None
    _check_transport(a, token)
    return ServerConfig(
        address=a.address, run_dir=a.run_dir, output=a.output, resume=a.resume, keep_round_models=a.keep_round_models,
        model=a.model, weights=a.weights, train_policy=a.train_policy, fedbn=a.fedbn, image_size=a.image_size,
        num_classes=a.num_classes, data=a.data, data_cache=a.data_cache,
        cache_dir=None if a.cache_dir == "" else Path(a.cache_dir) if a.cache_dir else a.data_cache / "features", test_per_class=a.test_per_class,
        eval_batch_size=a.eval_batch_size, root_data=a.root_data, root_per_class=a.root_per_class, schedule=schedule, partitions=partitions, train=train, strategy=strategy,
        compression=a.compression, upload_codec=a.upload_codec, download_codec=a.download_codec, chunk_bytes=a.chunk_bytes, limits=_limits(a), tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca,
        token=token, tokens_file=a.tokens_file, allow_insecure=a.allow_insecure,
        device=a.device, seed=a.seed, log_level=a.log_level, log_format=a.log_format,
        observe=observe_settings(a, env, tls=a.tls_cert is not None, allow_insecure=a.allow_insecure),
        round_train=round_schedule(a.round_config, train, schedule.rounds) if a.round_config else {},
        metric_aggregation=_metric_aggregation(a.metric_aggregation),
    )


def _metric_aggregation(ref: str) -> str:
    if ref and not is_plugin(ref):
        raise ConfigError(f"--metric-aggregation {ref[:80]!r}: name a function as package.module:function")
    return ref


def _schedule(a: argparse.Namespace) -> Schedule:
    if a.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {a.rounds}")
    if a.min_clients < 1:
        raise ConfigError(f"--min-clients must be >= 1, got {a.min_clients}")
    if a.clients_per_round < 0:
        raise ConfigError(f"--clients-per-round must be >= 0 (0: all connected), got {a.clients_per_round}")
    if not 0 <= a.fraction <= 1 or (a.fraction and a.clients_per_round):
        raise ConfigError("--fraction must be in (0, 1], and not combined with --clients-per-round")
    if a.min_fit_clients < 0:
        raise ConfigError(f"--min-fit-clients must be >= 0 (0: same as --min-clients), got {a.min_fit_clients}")
    min_fit = a.min_fit_clients or min(a.min_clients, a.clients_per_round or a.min_clients)
    if a.clients_per_round and min_fit > a.clients_per_round:
        raise ConfigError(f"--min-fit-clients {min_fit} exceeds --clients-per-round {a.clients_per_round}")
    if a.over_select < 0:
        raise ConfigError("--over-select must be >= 0")
    if a.over_select and not (a.clients_per_round or a.fraction):
        raise ConfigError("--over-select needs --clients-per-round or --fraction: when every connected client is selected "
                          "there is no one to add")
    if not a.round_timeout > 0:
        raise ConfigError("--round-timeout must be > 0 seconds")
    for flag, value in (("--round-retries", a.round_retries), ("--wait-timeout", a.wait_timeout), ("--join-grace", a.join_grace),
                        ("--finish-grace", a.finish_grace), ("--eval-every", a.eval_every), ("--client-eval-every", a.client_eval_every),
                        ("--eval-batch-size", a.eval_batch_size)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    if a.max_examples < 1:
        raise ConfigError(f"--max-examples must be >= 1, got {a.max_examples}")
    if a.client_eval_every and a.holdout_fraction == 0:
        raise ConfigError("--client-eval-every needs --holdout-fraction > 0 (clients evaluate on a held-out slice)")
    return Schedule(
        rounds=a.rounds, min_clients=a.min_clients, clients_per_round=a.clients_per_round, fraction=a.fraction,
        min_fit_clients=min_fit, over_select=a.over_select, round_timeout=a.round_timeout, round_retries=a.round_retries,
        wait_timeout=a.wait_timeout, join_grace=a.join_grace, finish_grace=a.finish_grace, eval_every=a.eval_every,
        client_eval_every=a.client_eval_every, max_examples=a.max_examples,
    )


def _partitions(a: argparse.Namespace) -> PartitionPlan:
    if a.partition_scheme not in SCHEMES:
        raise ConfigError(f"--partition-scheme {a.partition_scheme!r}: use one of {', '.join(SCHEMES)}")
    if not 0 <= a.holdout_fraction < 1:
        raise ConfigError("--holdout-fraction must be in [0, 1)")
    if a.num_partitions < 0:
        raise ConfigError("--num-partitions must be >= 0")
    if not a.alpha > 0:
        raise ConfigError(f"--alpha must be > 0, got {a.alpha}")
    if a.classes_per_client < 1:
        raise ConfigError(f"--classes-per-client must be >= 1, got {a.classes_per_client}")
    if a.train_per_class < 0 or a.test_per_class < 0:
        raise ConfigError("--train-per-class and --test-per-class must be >= 0 (0: all)")
    return PartitionPlan(a.num_partitions, a.partition_scheme, a.alpha, a.classes_per_client, a.seed, a.holdout_fraction,
                         a.train_per_class)


def _check_model(a: argparse.Namespace, train: TrainConfig) -> None:
    from fedtl.common.models import MODELS, TrainPolicy, known_model  # torch: only once the cheaper checks passed

    if not known_model(a.model):
        raise ConfigError(f"--model {a.model!r} is unknown; choose one of {', '.join(sorted(MODELS))}, timm:NAME, "
                          "or your own package.module:function (docs/api.md)")
    policy = TrainPolicy.parse(a.train_policy)
    if a.weights == "imagenet" and a.model in MODELS and MODELS[a.model].pretrained is None:
        raise ConfigError(f"--weights imagenet: {a.model} has no pretrained weights; use none or a weights file")
    if train.feature_cache == "on" and (policy.text == "all" or train.augment):
        why = "nothing is frozen under --train all" if policy.text == "all" else "--augment changes every image each epoch"
        raise ConfigError(f"--feature-cache on needs a frozen prefix and fixed inputs, but {why}: use --feature-cache auto "
                          "(on exactly when it is exact) or off, or --train head / blocks:K without --augment")
    if a.image_size < 0 or a.num_classes < 0 or a.num_classes == 1:
        raise ConfigError("--image-size must be >= 0 and --num-classes 0 (from the data) or >= 2")
    check_device_text(a.device)


def _limits(a: argparse.Namespace) -> Limits:
    if a.max_concurrent_uploads < 1 or a.max_concurrent_downloads < 1:
        raise ConfigError("--max-concurrent-uploads and --max-concurrent-downloads must be >= 1")
    for flag, value in (("--max-clients", a.max_clients), ("--join-rate", a.join_rate), ("--join-rate-total", a.join_rate_total),
                        ("--min-transfer-rate", a.min_transfer_rate)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 (0: no limit), got {value}")
    if not a.stall_timeout > 0:
        raise ConfigError(f"--stall-timeout must be > 0 seconds, got {a.stall_timeout}")
    return Limits(a.max_clients, a.join_rate, a.join_rate_total, a.max_concurrent_uploads, a.max_concurrent_downloads,
                  a.stall_timeout, a.min_transfer_rate, int(a.max_aggregate_memory * (1 << 20)))


def _check_transport(a: argparse.Namespace, token: str | None) -> None:
    if a.compression not in ("none", "gzip"):
        raise ConfigError(f"--compression {a.compression!r}: use none or gzip")
    if a.upload_codec.startswith("topk") and a.secure_aggregation:
        raise ConfigError(f"--upload-codec {a.upload_codec} with --secure-aggregation: masks hide dense vectors, and a sparse update's "
                          "indices would show the coordinator which entries each client changed most; use raw (or --secagg-bits)")
    if a.upload_codec not in ("raw", "int8") and a.secure_aggregation:
        raise ConfigError(f"--upload-codec {a.upload_codec} with --secure-aggregation: masked updates travel as fixed-point words "
                          "(--secagg-bits sets their size); use raw, or int8 (8-bit values in words just wide enough for the sum)")
    if not 0 < a.chunk_bytes <= DEFAULT_CHUNK_BYTES:
        raise ConfigError(f"--chunk-bytes must be in 1..{DEFAULT_CHUNK_BYTES}")
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if a.tls_client_ca is not None and a.tls_cert is None:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    check_file("--tls-cert", a.tls_cert, "CERTIFICATE")
    check_file("--tls-key", a.tls_key, "PRIVATE KEY")
    check_file("--tls-client-ca", a.tls_client_ca, "CERTIFICATE")
    check_file("--tokens-file", a.tokens_file)
    from fedtl.server.auth import Authenticator  # a bad tokens file, or one with --token, fails now

    pins = Authenticator.from_files(token, a.tokens_file).pins
    if pins and not a.num_partitions > max(pins.values()):
        raise ConfigError(f"--tokens-file pins shards up to {max(pins.values())}: set --num-partitions to more than that")
    check_folder("--run-dir", a.run_dir)
    check_folder("--data-cache", a.data_cache)
    if a.output is not None and a.output.is_dir():
        raise ConfigError(f"--output {a.output}: is a folder; name the model file to write, e.g. {a.output / 'model.safetensors'}")
    host, sep, port = a.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--address {a.address!r}: use HOST:PORT, e.g. 0.0.0.0:50051 or [::]:50051")
