"""The local training recipe the coordinator sends with every task: one flag per TrainConfig field (common/config.py
declares each field's help and default; the wire carries it by name), and the run's seed."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

from fedtl.common.config import TrainConfig
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    for f in fields(TrainConfig):
        if f.name == "seed" or f.metadata.get("flag") is False:
            continue  # the run's --seed is the one clients get; the others are set by the coordinator, per round
        flag, help_text = TrainConfig.flag(f.name), f.metadata["help"]
        if f.type in ("bool", bool):
            g.add_argument(flag, action="store_true", default=f.default, help=help_text)
        else:
            g.add_argument(flag, type=type(f.default), default=f.default, help=help_text)
    g.add_argument("--seed", type=int, default=0, help="seeds selection, partitions, the new head and clients' shuffling")


SECTION = Section("training", "training recipe (sent to clients)", add_flags)


def train_config(a: argparse.Namespace) -> TrainConfig:
    train = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.metadata.get("flag") is not False})
    if train.private and not train.dp_rounds:  # clients spread --dp-epsilon over the run
        train = replace(train, dp_rounds=a.rounds)
    return train
