"""`python -m server` flags -> one frozen ServerConfig. Every bad value raises ConfigError naming the flag."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.config import TrainConfig
from common.errors import ConfigError
from common.partition import SCHEMES


@dataclass(frozen=True)
class ServerConfig:
    address: str
    run_dir: Path
    output: Path | None
    resume: str  # auto | never
    keep_round_models: bool
    # model
    model: str
    weights: str
    train_policy: str
    fedbn: bool
    image_size: int
    num_classes: int  # 0: from the test split's classes
    # data
    data: str
    data_cache: Path
    test_per_class: int
    train_per_class: int
    num_partitions: int  # 0: fixed when round 1 starts, to the clients connected then
    partition_scheme: str
    alpha: float
    classes_per_client: int
    holdout_fraction: float
    # rounds
    rounds: int
    min_clients: int
    clients_per_round: int  # 0: every connected client (unless --fraction)
    fraction: float  # > 0: this share of the connected clients
    min_fit_clients: int
    over_select: float
    round_timeout: float
    round_retries: int
    wait_timeout: float  # 0: wait for --min-clients forever
    join_grace: float
    finish_grace: float
    # algorithm
    train: TrainConfig
    server_optimizer: str
    server_lr: float
    server_momentum: float
    max_update_norm: float
    max_examples: int
    eval_every: int
    client_eval_every: int
    eval_batch_size: int
    # transport and security
    compression: str
    chunk_bytes: int
    max_concurrent_uploads: int
    max_concurrent_downloads: int
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

    @property
    def secure(self) -> bool:
        return self.tls_cert is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server", description="Coordinate a federated fine-tuning run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("run")
    g.add_argument("--address", default="0.0.0.0:50051", help="host:port to listen on (port 0: any free port)")
    g.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="checkpoints and round logs go here")
    g.add_argument("--output", type=Path, default=None, help="final model file (default: RUN_DIR/final_model.safetensors)")
    g.add_argument("--resume", choices=("auto", "never"), default="auto", help="auto: continue from RUN_DIR's checkpoint when there is one")
    g.add_argument("--keep-round-models", action="store_true", help="also keep the global model of every round in RUN_DIR/models/")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="evaluation device: auto, cpu, cuda or cuda:N")
    g.add_argument("--log-level", default="INFO")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet18", help="resnet18, resnet50, mobilenet_v3_small, efficientnet_lite0, tiny_cnn")
    g.add_argument("--weights", default="imagenet", help="imagenet, none, or a local weights file (.pth or .safetensors)")
    g.add_argument("--train", dest="train_policy", default="all", help="what clients fine-tune: all, head, or blocks:K")
    g.add_argument("--fedbn", action="store_true", help="keep BatchNorm layers local to each client (FedBN)")
    g.add_argument("--image-size", type=int, default=0, help="input size in pixels (0: 32 for 32 px data, else the model's)")
    g.add_argument("--num-classes", type=int, default=0, help="0: the number of classes in the test split")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cifar10", help="cifar10[:ROOT], synthetic[:N], an ImageFolder dir with train/ and test/, or a .tar.gz of one")
    g.add_argument("--data-cache", type=Path, default=Path.home() / ".cache" / "fedtl", help="downloads and extracted archives")
    g.add_argument("--test-per-class", type=int, default=0, help="evaluate on the first N test images per class (0: all)")
    g.add_argument("--train-per-class", type=int, default=0, help="clients train on the first N images per class (0: all)")
    g.add_argument("--num-partitions", type=int, default=0, help="shards of the training split (0: as many as clients connected when round 1 starts)")
    g.add_argument("--partition-scheme", default="iid", help="iid, dirichlet or label-skew")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    g.add_argument("--classes-per-client", type=int, default=2, help="label-skew: classes each client sees")
    g.add_argument("--holdout-fraction", type=float, default=0.0, help="share of each shard kept for federated evaluation")
    g = p.add_argument_group("rounds")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--min-clients", type=int, default=2, help="connected clients needed before a round starts")
    g.add_argument("--clients-per-round", type=int, default=0, help="how many clients to select each round (0: all connected)")
    g.add_argument("--fraction", type=float, default=0.0, help="select this share of the connected clients instead (0 < F <= 1)")
    g.add_argument("--min-fit-clients", type=int, default=0, help="answers needed to aggregate a round (0: same as --min-clients)")
    g.add_argument("--over-select", type=float, default=0.0, help="select this much more (e.g. 0.25) and close at the target count")
    g.add_argument("--round-timeout", type=float, default=600.0, help="seconds a round waits for updates")
    g.add_argument("--round-retries", type=int, default=2, help="re-run a round that got too few answers this many times, then stop")
    g.add_argument("--wait-timeout", type=float, default=0.0, help="give up if --min-clients have not connected after this many seconds (0: wait)")
    g.add_argument("--join-grace", type=float, default=2.0, help="before round 1, wait until no client joined for this long")
    g.add_argument("--finish-grace", type=float, default=10.0, help="after the last round, wait this long for clients to hang up")
    g = p.add_argument_group("training recipe (sent to clients)")
    g.add_argument("--algorithm", default="fedavg", help="fedavg (clients send weight deltas) or fedsgd (clients send gradients)")
    g.add_argument("--local-epochs", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx term (0: off)")
    g.add_argument("--max-steps", type=int, default=0, help="cap local SGD steps per round (0: whole epochs)")
    g.add_argument("--augment", action="store_true", help="random crop and flip on clients")
    g.add_argument("--feature-cache", default="auto", help="auto, on or off: cache the frozen prefix's outputs")
    g.add_argument("--personal-epochs", type=int, default=0, help="clients also fine-tune a personal head for this many epochs")
    g = p.add_argument_group("aggregation")
    g.add_argument("--server-optimizer", default="sgd", help="sgd (FedAvg/FedSGD), avgm (FedAvgM) or adam (FedAdam)")
    g.add_argument("--server-lr", type=float, default=0.0, help="0: 1.0 for fedavg, --lr for fedsgd")
    g.add_argument("--server-momentum", type=float, default=0.9)
    g.add_argument("--max-update-norm", type=float, default=0.0, help="clip each update's L2 norm to this (0: off)")
    g.add_argument("--max-examples", type=int, default=10_000_000, help="largest num_examples a client may claim")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate on the test split every N rounds (0: never)")
    g.add_argument("--client-eval-every", type=int, default=0, help="federated evaluation on clients' held-out slices every N rounds")
    g.add_argument("--eval-batch-size", type=int, default=0, help="0: picked for the image size (64 at 64 px, 256 at 32 px)")
    g = p.add_argument_group("transport and security")
    g.add_argument("--compression", default="none", help="none or gzip (for slow links)")
    g.add_argument("--chunk-bytes", type=int, default=(4 << 20) - 64, help="bytes per streamed chunk (<= 4 MiB)")
    g.add_argument("--max-concurrent-uploads", type=int, default=4, help="updates decoded at once; bounds server memory")
    g.add_argument("--max-concurrent-downloads", type=int, default=8, help="model streams sent at once (others queue); bounds server memory")
    g.add_argument("--tls-cert", type=Path, default=None)
    g.add_argument("--tls-key", type=Path, default=None)
    g.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates signed by this CA (mutual TLS)")
    g.add_argument("--token", default=None, help="shared token every client must send (or FEDTL_TOKEN)")
    g.add_argument("--tokens-file", type=Path, default=None, help="per-client tokens: lines of 'client-name token'")
    g.add_argument("--allow-insecure", action="store_true", help="listen without TLS on a non-loopback address")
    return p


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServerConfig:
    import os

    env = dict(os.environ) if env is None else env
    args = build_parser().parse_args(argv)
    return from_namespace(args, env)


def from_namespace(a: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    if a.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {a.rounds}")
    if a.min_clients < 1:
        raise ConfigError(f"--min-clients must be >= 1, got {a.min_clients}")
    if a.clients_per_round < 0:
        raise ConfigError(f"--clients-per-round must be >= 0 (0: all connected), got {a.clients_per_round}")
    if not 0 <= a.fraction <= 1 or (a.fraction and a.clients_per_round):
        raise ConfigError("--fraction must be in (0, 1], and not combined with --clients-per-round")
    min_fit = a.min_fit_clients or min(a.min_clients, a.clients_per_round or a.min_clients)
    if a.clients_per_round and min_fit > a.clients_per_round:
        raise ConfigError(f"--min-fit-clients {min_fit} exceeds --clients-per-round {a.clients_per_round}")
    if a.over_select < 0:
        raise ConfigError("--over-select must be >= 0")
    if not a.round_timeout > 0:
        raise ConfigError("--round-timeout must be > 0 seconds")
    if a.partition_scheme not in SCHEMES:
        raise ConfigError(f"--partition-scheme {a.partition_scheme!r}: use one of {', '.join(SCHEMES)}")
    if not 0 <= a.holdout_fraction < 1:
        raise ConfigError("--holdout-fraction must be in [0, 1)")
    if a.num_partitions < 0:
        raise ConfigError("--num-partitions must be >= 0")
    if a.compression not in ("none", "gzip"):
        raise ConfigError(f"--compression {a.compression!r}: use none or gzip")
    if not 0 < a.chunk_bytes <= (4 << 20) - 64:
        raise ConfigError("--chunk-bytes must be in 1..4194240")
    if a.max_concurrent_uploads < 1 or a.max_concurrent_downloads < 1:
        raise ConfigError("--max-concurrent-uploads and --max-concurrent-downloads must be >= 1")
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if a.tls_client_ca is not None and a.tls_cert is None:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", a.tls_cert), ("--tls-key", a.tls_key), ("--tls-client-ca", a.tls_client_ca), ("--tokens-file", a.tokens_file)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    if a.max_update_norm < 0 or a.max_examples < 1:
        raise ConfigError("--max-update-norm must be >= 0 and --max-examples >= 1")
    if a.eval_every < 0 or a.client_eval_every < 0:
        raise ConfigError("--eval-every and --client-eval-every must be >= 0")
    if a.client_eval_every and a.holdout_fraction == 0:
        raise ConfigError("--client-eval-every needs --holdout-fraction > 0 (clients evaluate on a held-out slice)")
    _check_address(a.address)
    train = TrainConfig(
        algorithm=a.algorithm, local_epochs=a.local_epochs, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
        weight_decay=a.weight_decay, proximal_mu=a.proximal_mu, max_steps=a.max_steps, augment=a.augment,
        seed=a.seed, feature_cache=a.feature_cache, personal_epochs=a.personal_epochs,
    )
    server_lr = a.server_lr or (a.lr if a.algorithm == "fedsgd" else 1.0)
    return ServerConfig(
        address=a.address, run_dir=a.run_dir, output=a.output, resume=a.resume, keep_round_models=a.keep_round_models,
        model=a.model, weights=a.weights, train_policy=a.train_policy, fedbn=a.fedbn, image_size=a.image_size,
        num_classes=a.num_classes,
        data=a.data, data_cache=a.data_cache, test_per_class=a.test_per_class, train_per_class=a.train_per_class,
        num_partitions=a.num_partitions, partition_scheme=a.partition_scheme, alpha=a.alpha,
        classes_per_client=a.classes_per_client, holdout_fraction=a.holdout_fraction,
        rounds=a.rounds, min_clients=a.min_clients, clients_per_round=a.clients_per_round, fraction=a.fraction, min_fit_clients=min_fit,
        over_select=a.over_select, round_timeout=a.round_timeout, round_retries=a.round_retries,
        wait_timeout=a.wait_timeout, join_grace=a.join_grace, finish_grace=a.finish_grace,
        train=train, server_optimizer=a.server_optimizer, server_lr=server_lr, server_momentum=a.server_momentum,
        max_update_norm=a.max_update_norm, max_examples=a.max_examples, eval_every=a.eval_every,
        client_eval_every=a.client_eval_every, eval_batch_size=a.eval_batch_size,
        compression=a.compression, chunk_bytes=a.chunk_bytes, max_concurrent_uploads=a.max_concurrent_uploads,
        max_concurrent_downloads=a.max_concurrent_downloads,
        tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca,
        token=a.token or env.get("FEDTL_TOKEN") or None, tokens_file=a.tokens_file, allow_insecure=a.allow_insecure,
        device=a.device, seed=a.seed, log_level=a.log_level,
    )


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--address {address!r}: use HOST:PORT, e.g. 0.0.0.0:50051 or [::]:50051")
