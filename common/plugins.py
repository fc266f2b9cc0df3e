"""The operator's own code, named as `package.module:function` (`--model`, `--data`, `--round-config`), and timm models
by name (`--model timm:NAME`): imported by module path on each side that needs it, turned into the same networks and
sources the built-in models and datasets are.

A coordinator can name a model plugin that its clients then import and run. A client does so only for modules its
operator allowed (`--allow-plugin MODULE`): naming code is the coordinator's choice, running it is the data owner's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedtl.common.errors import ConfigError, DependencyMissing
from fedtl.common.plugin_refs import check_allowed, is_plugin, load

__all__ = ["Data", "Model", "Staged", "build_plugin_model", "check_allowed", "is_plugin", "load", "plugin_data", "timm_parts"]



@dataclass
class Model:
    """What a model function returns: any module, split into stages in forward order.

    Give `backbone` and `head` (the usual transfer-learning split: `--train head` trains the head on the
    backbone's cached features), or `stages` for a finer split (`--train blocks:K`). `mean`, `std` and
    `image_size` describe image inputs; leave them for anything else (inputs that are not uint8 images
    reach the model unchanged)."""

    backbone: nn.Module | None = None
    head: nn.Module | None = None
    stages: Sequence[tuple[str, nn.Module]] = ()
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_size: int = 0

    def split(self) -> list[tuple[str, nn.Module]]:
        if self.stages:
            return list(self.stages)
        if self.backbone is None or self.head is None:
            raise ConfigError("a model function must return fedtl.api.Model(backbone=..., head=...) or Model(stages=[...])")
        return [("backbone", self.backbone), ("head", self.head)]


@dataclass
class Data:
    """What a data function returns: train and test examples (any map-style Dataset of (input, label), or a pair of
    tensors) and the class names in label order. Inputs that are uint8 N x C x H x W tensors are treated as images."""

    train: Any
    test: Any
    classes: Sequence[str] = field(default_factory=list)


class Staged(nn.Module):
    """A plugin model as one module: its stages are children named as the stages, so state-dict names are stable."""

    def __init__(self, stages: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, stage in stages:
            self.add_module(name.replace(".", "_"), stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.children():
            x = stage(x)
        return x


def build_plugin_model(ref: str, num_classes: int) -> tuple[nn.Module, list[tuple[str, nn.Module]], Model]:
    """(module, stages, description) from a model function `fn(num_classes) -> Model`."""
    made = load(ref, "--model")(num_classes)
    if isinstance(made, nn.Module) and not isinstance(made, Model):
        raise ConfigError(f"--model {ref}: return fedtl.api.Model(backbone=..., head=...), not a bare module: the split says "
                          "what is frozen and where features can be cached")
    if not isinstance(made, Model):
        raise ConfigError(f"--model {ref}: returned {type(made).__name__}, expected fedtl.api.Model")
    stages = made.split()
    return Staged(stages), stages, made


# ---------------------------------------------------------------- timm models by name


class _TimmBody(nn.Module):
    """Everything of a timm model but its classifier, run as forward_features + pre-logits pooling."""

    def __init__(self, model: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList([m for m in model.children() if m is not classifier])
        self.direct = nn.ParameterList(list(model._parameters.values()))  # class tokens, position embeddings
        for name, buffer in model._buffers.items():
            if buffer is not None:
                self.register_buffer(f"direct_{name}", buffer, persistent=False)
        object.__setattr__(self, "_model", model)  # not a child: its classifier belongs to the head stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model: Any = self._model  # a timm model: forward_features and forward_head are timm's, not nn.Module's
        return model.forward_head(model.forward_features(x), pre_logits=True)


def timm_parts(name: str, num_classes: int) -> tuple[nn.Module, list[tuple[str, nn.Module]], str, dict]:
    """(model, stages, classifier's state-dict prefix, pretrained config) for `timm:NAME`."""
    try:
        import timm
    except ImportError:
        raise DependencyMissing("--model timm:NAME needs timm: pip install 'timm>=1.0' (or pip install 'fedtl[efficientnet]')") from None
    try:
        model: Any = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # an unknown name
        raise ConfigError(f"--model timm:{name}: {exc}") from None
    classifier = model.get_classifier()
    prefix = next(n for n, m in model.named_modules() if m is classifier) + "."
    return model, [("body", _TimmBody(model, classifier)), ("head", classifier)], prefix, dict(model.pretrained_cfg or {})


# ---------------------------------------------------------------- data functions


@functools.lru_cache(maxsize=4)
def plugin_data(ref: str) -> tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray], list[str]]:
    """Both splits of a data function as (inputs, labels) in memory, and the class names (called once per process)."""
    data = load(ref, "--data")()
    if not isinstance(data, Data):
        raise ConfigError(f"--data {ref}: returned {type(data).__name__}, expected fedtl.api.Data(train=..., test=..., classes=...)")
    train, test = _tensors(data.train, ref, "train"), _tensors(data.test, ref, "test")
    top = int(max(train[1].max(initial=-1), test[1].max(initial=-1)))
    classes = [str(c) for c in data.classes] or [str(i) for i in range(top + 1)]
    if top >= len(classes) or min(train[1].min(initial=0), test[1].min(initial=0)) < 0:
        raise ConfigError(f"--data {ref}: labels must lie in 0..{len(classes) - 1} (one per class name)")
    return train, test, classes


def _tensors(split: Any, ref: str, name: str) -> tuple[torch.Tensor, np.ndarray]:
    if isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        inputs, labels = split
    else:
        try:
            pairs = [split[i] for i in range(len(split))]
        except TypeError:
            raise ConfigError(f"--data {ref}: {name} must be a map-style Dataset of (input, label) or a pair of tensors") from None
        if not pairs:
            raise ConfigError(f"--data {ref}: the {name} split is empty")
        inputs = torch.stack([torch.as_tensor(x) for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    if inputs.dtype != torch.uint8:
        inputs = inputs.float()
    if len(inputs) != len(labels):
        raise ConfigError(f"--data {ref}: {name} has {len(inputs)} inputs but {len(labels)} labels")
    return inputs.contiguous(), labels.to(torch.int64).numpy()
