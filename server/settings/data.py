"""The coordinator's data: the test split it evaluates on, and how the shared training split is cut into shards."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from fedtl.common.errors import ConfigError
from fedtl.common.partition import SCHEMES
from fedtl.common.sections import Section


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


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default="cifar10", help="cifar10[:ROOT], synthetic[:N], an ImageFolder dir with train/ and test/, or a .tar.gz of one")
    g.add_argument("--data-cache", type=Path, default=Path.home() / ".cache" / "fedtl", help="downloads and extracted archives")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="frozen-backbone features kept by digest (the test split's; a simulation's clients'), so the next run of "
                        "the same configuration reads them instead of computing them (default: DATA_CACHE/features; '' : none)")
    g.add_argument("--test-per-class", type=int, default=0, help="evaluate on the first N test images per class (0: all but the "
                   "--validation-per-class ones)")
    g.add_argument("--validation-per-class", type=int, default=None, metavar="N",
                   help="the coordinator holds back N images of each class of its test split, never in the reported test accuracy, "
                        "and keeps the model that scores best on them as RUN_DIR/best_model.safetensors (default 50, when every "
                        "class has room; 0: none)")
    g.add_argument("--train-per-class", type=int, default=0, help="clients train on the first N images per class (0: all)")
    g.add_argument("--num-partitions", type=int, default=0, help="shards of the training split (0: as many as clients connected when round 1 starts)")
    g.add_argument("--partition-scheme", default="iid", help=f"how the training split is sharded: {', '.join(SCHEMES)}")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    g.add_argument("--classes-per-client", type=int, default=2, help="label-skew: classes each client sees")
    g.add_argument("--holdout-fraction", type=float, default=0.0, help="share of each shard kept for federated evaluation")


SECTION = Section("data", "data", add_flags)


def partitions(a: argparse.Namespace) -> PartitionPlan:
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
    if a.validation_per_class is not None and a.validation_per_class < 0:
        raise ConfigError("--validation-per-class must be >= 0 (0: no validation slice, no best model)")
    return PartitionPlan(a.num_partitions, a.partition_scheme, a.alpha, a.classes_per_client, a.seed, a.holdout_fraction,
                         a.train_per_class)


DEFAULT_VALIDATION = 50


def validation_per_class(a: argparse.Namespace) -> tuple[int, bool]:
    """(images per class held back for validation, whether the user asked for that number)."""
    return (DEFAULT_VALIDATION, False) if a.validation_per_class is None else (int(a.validation_per_class), True)


def cache_dir(a: argparse.Namespace) -> Path | None:
    """--cache-dir: '' keeps no features; unset keeps them under DATA_CACHE/features."""
    return None if a.cache_dir == "" else Path(a.cache_dir) if a.cache_dir else a.data_cache / "features"
