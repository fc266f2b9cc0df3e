"""Domain records shared by server and client: what a round asks a client to do.

They are frozen dataclasses built once at the edge (CLI or wire) and passed down; common/wire.py
converts them to and from protobuf so no protobuf type reaches the logic.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from fedtl.common.errors import ConfigError
from fedtl.common.metrics import ClientMetrics
from fedtl.common.plugin_refs import is_plugin
from fedtl.common.secagg.messages import SecAggSetup, SecAggStep
from fedtl.common.validated_sum.messages import ValidatedSetup

PROTOCOL = "fedtl.v5"  # protos/federation.proto's protocol_version (the gRPC package stays fedtl.v1)
ALGORITHMS = ("fedavg", "fedsgd")
FEATURE_CACHE_MODES = ("auto", "on", "off")
HEAD_KINDS = ("ridge", "ncm")  # closed-form heads (common/heads.py): the statistics a round collects for each
STATISTICS_KINDS = (*HEAD_KINDS, "batchnorm")  # a statistics round's payload: a head's, or BatchNorm's (common/batchnorm.py)
ACCOUNTANTS = ("rdp", "pld")


class UpdateKind(enum.IntEnum):
    WEIGHT_DELTA = 1
    GRADIENT = 2
    STATISTICS = 3  # a statistics round's float64 means: a closed-form head's (round 1) or BatchNorm's (the last round)


def setting(default: object, help: str) -> Any:
    """A training setting: its flag (--name-with-dashes), help and default live here and nowhere else;
    server/config.py makes the flags, common/wire.py carries it (a same-named field of pb.TrainConfig)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Local training recipe the server sends with every task. Adding a setting: a field here and a field
    of the same name in protos/federation.proto's TrainConfig (a test checks they agree)."""

    algorithm: str = setting("fedavg", "fedavg (clients send weight deltas) or fedsgd (clients send gradients)")
    local_epochs: int = setting(1, "local epochs per round")
    batch_size: int = setting(32, "local batch size")
    lr: float = setting(0.01, "local SGD learning rate")
    momentum: float = setting(0.9, "local SGD momentum")
    weight_decay: float = setting(5e-4, "local SGD weight decay")
    proximal_mu: float = setting(0.0, "FedProx term (0: off)")
    max_steps: int = setting(0, "cap local SGD steps per round (0: whole epochs)")
    augment: bool = setting(False, "random crop and flip on clients")
    seed: int = setting(0, "run seed: clients derive per-round seeds from it")
    feature_cache: str = setting("auto", "auto, on or off: cache the frozen prefix's outputs")
    personal_epochs: int = setting(0, "clients also fine-tune a personal head for this many epochs")
    dp_clip: float = setting(0.0, "record-level DP-SGD on every client: clip each example's gradient to this L2 norm (0: off; "
                                  "docs/privacy.md)")
    dp_noise: float = setting(0.0, "record-level DP-SGD: noise multiplier (noise std / --dp-clip); 0: each client calibrates "
                                   "its own to --dp-epsilon")
    dp_epsilon: float = setting(0.0, "record-level DP-SGD: the ε each client's data may spend over --dp-rounds rounds")
    dp_delta: float = setting(1e-5, "δ of every ε reported, both DP modes (keep it below 1 / records, or 1 / clients)")
    dp_rounds: int = setting(0, "rounds the --dp-epsilon budget is spread over (0: --rounds)")
    dp_accountant: str = setting("rdp", "privacy accountant: rdp or pld (dp-accounting's)")
    train_fn: str = setting("", "your own local training, package.module:function (docs/api.md); clients import it only from "
                                "modules their operator allows (--allow-plugin)")
    evaluate_fn: str = setting("", "your own client-side evaluation, package.module:function, where clients evaluate "
                                   "(--client-eval-every); allowed like --train-fn")
    # Not a flag: set by the coordinator for a round that collects statistics instead of training (--head-init, --batchnorm)
    statistics: str = field(default="", metadata={"help": "", "flag": False})
    # Not a flag: a head's statistics round under secure aggregation clips each example's features to this L2 norm, which
    # bounds the masked statistics' range (0: not clipped)
    feature_clip: float = field(default=0.0, metadata={"help": "", "flag": False})

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"--algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        if self.local_epochs < 1:
            raise ConfigError(f"--local-epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.proximal_mu < 0 or self.max_steps < 0 or self.personal_epochs < 0:
            raise ConfigError("--weight-decay, --proximal-mu, --max-steps and --personal-epochs must be >= 0")
        for flag, ref in (("--train-fn", self.train_fn), ("--evaluate-fn", self.evaluate_fn)):
            if ref and not is_plugin(ref):
                raise ConfigError(f"{flag} {ref[:80]!r}: name a function as package.module:function")
        if self.train_fn and (self.algorithm != "fedavg" or self.proximal_mu or self.dp_clip):
            raise ConfigError("--train-fn replaces the local training loop, so it works with --algorithm fedavg only, without "
                              "--proximal-mu or --dp-clip (add those terms in your own function)")
        if self.statistics not in ("", *STATISTICS_KINDS):
            raise ConfigError(f"statistics {self.statistics!r}: use one of {', '.join(STATISTICS_KINDS)}")
        if not (self.feature_clip >= 0 and math.isfinite(self.feature_clip)):
            raise ConfigError(f"feature clip {self.feature_clip!r}: must be a finite number >= 0")
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ConfigError(f"--feature-cache {self.feature_cache!r}: use one of {', '.join(FEATURE_CACHE_MODES)}")
        self._check_privacy()
        if self.algorithm == "fedsgd" and (self.local_epochs != 1 or self.proximal_mu):
            raise ConfigError("--algorithm fedsgd sends one gradient of the shard per round: --local-epochs and --proximal-mu do not "
                              "apply (leave them at 1 and 0, or use --algorithm fedavg)")

    def _check_privacy(self) -> None:
        if min(self.dp_clip, self.dp_noise, self.dp_epsilon, self.dp_rounds) < 0:
            raise ConfigError("--dp-clip, --dp-noise, --dp-epsilon and --dp-rounds must be >= 0")
        if self.dp_accountant not in ACCOUNTANTS:
            raise ConfigError(f"--dp-accountant {self.dp_accountant!r}: use one of {', '.join(ACCOUNTANTS)}")
        if not self.dp_clip:
            if self.dp_noise or self.dp_epsilon:
                raise ConfigError("--dp-noise and --dp-epsilon set record-level DP-SGD's noise: also give --dp-clip (e.g. 1.0)")
            return
        if bool(self.dp_noise) == bool(self.dp_epsilon):
            raise ConfigError("record-level DP-SGD (--dp-clip) needs exactly one of --dp-noise (a fixed noise multiplier) and "
                              "--dp-epsilon (each client calibrates its noise to this budget)")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"--dp-delta must be in (0, 1), got {self.dp_delta}")
        if self.algorithm != "fedavg" or self.proximal_mu:
            raise ConfigError("record-level DP-SGD runs inside local SGD: use --algorithm fedavg without --proximal-mu")

    @property
    def private(self) -> bool:
        """Record-level DP-SGD on the clients."""
        return self.dp_clip > 0

    @property
    def update_kind(self) -> UpdateKind:
        if self.statistics:
            return UpdateKind.STATISTICS
        return UpdateKind.GRADIENT if self.algorithm == "fedsgd" else UpdateKind.WEIGHT_DELTA

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class DataAssignment:
    """Which shard of the shared training split a client trains on (scheme 'none': all its local data)."""

    partition_index: int = 0
    partition_count: int = 1
    scheme: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    seed: int = 0
    holdout_fraction: float = 0.0
    per_class_limit: int = 0


@dataclass(frozen=True)
class ModelRecipe:
    """What a client needs to build the server's architecture; the weights come over the wire."""

    model: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_policy: str = "all"
    client_local: tuple[str, ...] = ()  # "batchnorm" for FedBN
    class_names: tuple[str, ...] = ()  # the run's classes in label order (empty: an older server; counts must match)


@dataclass(frozen=True)
class SegmentRef:
    name: str  # "static", "trainable", or "trainable-delta" (int8 steps from the version `base` names)
    sha256: str
    total_bytes: int
    encoding: str = "raw"  # the download codec (common/codecs): raw, fp16 or int8
    base: str = ""  # trainable-delta: the sha256 of the trainable version it applies to


@dataclass(frozen=True)
class TrainTask:
    round: int
    segments: tuple[SegmentRef, ...]
    base_digest: str
    config: TrainConfig
    data: DataAssignment
    evaluate: bool = False
    deadline_seconds: float = 0.0
    update_encoding: str = "raw"  # how the client must encode its update (common/codecs)
    secagg: SecAggSetup | None = None  # set: this round aggregates securely (common/secagg)
    validated: ValidatedSetup | None = None  # set: two-server validated aggregation (common/validated_sum)


@dataclass(frozen=True)
class Welcome:
    session_id: str
    run_id: str
    recipe: ModelRecipe
    data: DataAssignment | None = None


@dataclass(frozen=True)
class Finished:
    reason: str
    failed: bool = False
    resume: bool = False  # the server paused and will come back: clients reconnect (within --max-wait)
    standing: bool = False  # a standing federation's job is over: the site stays connected for the next one


Instruction = Welcome | TrainTask | Finished | SecAggStep  # a standing federation adds JobOffer (common/jobs.py)


@dataclass(frozen=True)
class Hello:
    client_name: str
    partition_index: int = -1  # -1: server assigns; -2: no partition (the client's whole local dataset)
    partition_count: int = 0
    hostname: str = ""
    device: str = ""
    torch_version: str = ""
    protocol: str = PROTOCOL
    identity: str = ""  # the client's secret (its work dir keeps it); the server binds the name to its digest


@dataclass(frozen=True)
class UpdateHeader:
    session_id: str
    round: int
    base_digest: str
    num_examples: int
    kind: UpdateKind
    total_bytes: int
    sha256: str
    metrics: ClientMetrics = field(default_factory=ClientMetrics)
    encoding: str = "raw"  # the update codec (common/codecs)


PARTITION_SERVER = -1
PARTITION_NONE = -2


def parse_partition(text: str) -> tuple[int, int]:
    """`--partition auto|none|i/N` -> (index, count) as carried in Hello."""
    if text == "auto":
        return PARTITION_SERVER, 0
    if text == "none":
        return PARTITION_NONE, 0
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--partition {text!r}: use auto, none or i/N (e.g. 0/4)") from None
    if not 0 <= index < count:
        raise ConfigError(f"--partition {text!r}: need 0 <= i < N")
    return index, count


MAX_NAME_LENGTH = 128


def client_name_problem(name: str) -> str | None:
    """What is wrong with a client name, or None: the one rule for the client's flag and the server's check."""
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or any(c.isspace() for c in name):
        return f"client name {name[:40]!r} must be 1-{MAX_NAME_LENGTH} printable characters without spaces"
    return None
