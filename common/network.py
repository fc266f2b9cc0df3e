"""A model as stages: the original torchvision/timm module plus its forward split into views, and train policies.

Every model is the original module (so state_dict names match published weights) plus a list of
stages whose composition equals its forward. Stages are what the train policy freezes (`head`,
`blocks:K`, `all`), what decides which tensors travel each round, and where the feature cache
cuts the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from fedtl.common.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]  # architecture with its original head, random init
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]  # views in forward order
    replace_head: Callable[[nn.Module, int], None]
    head_prefix: str  # state_dict prefix of the replaced head
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_image_size: int
    pretrained: Callable[[], dict[str, torch.Tensor]] | None = None  # ImageNet weights for `--weights imagenet`


@dataclass
class Network:
    """A model plus its forward as stages. `module` owns the parameters; stages are views of it."""

    spec: ModelSpec
    module: nn.Module
    stages: list[tuple[str, nn.Module]]
    num_classes: int
    stage_tensors: list[list[str]] = field(default_factory=list)  # state_dict names owned by each stage

    def __post_init__(self) -> None:
        owner: dict[int, int] = {}
        for index, (_, stage) in enumerate(self.stages):
            for tensor in [*stage.parameters(), *stage.buffers()]:
                owner.setdefault(id(tensor), index)
        self.stage_tensors = [[] for _ in self.stages]
        for name, tensor in self.module.state_dict(keep_vars=True).items():
            if id(tensor) not in owner:
                raise AssertionError(f"{self.spec.name}: tensor {name} belongs to no stage")
            self.stage_tensors[owner[id(tensor)]].append(name)

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for _, stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def has_parameters(self, index: int) -> bool:
        return any(True for _ in self.stages[index][1].parameters())


@dataclass(frozen=True)
class TrainPolicy:
    """Which stages are fine-tuned: all of them, the head only, or the last K stages that have weights."""

    text: str

    @staticmethod
    def parse(text: str) -> TrainPolicy:
        if text in ("all", "head"):
            return TrainPolicy(text)
        if text.startswith("blocks:") and text[7:].isdigit() and int(text[7:]) >= 1:
            return TrainPolicy(text)
        raise ConfigError(f"--train {text!r}: use 'all', 'head' or 'blocks:K' (K >= 1 trainable stages from the end)")

    def first_trainable(self, net: Network) -> int:
        """Index of the first trainable stage; everything before it is frozen (and runs in eval mode)."""
        if self.text == "all":
            return 0
        wanted = 1 if self.text == "head" else int(self.text[7:])
        weighted = [i for i in range(len(net.stages)) if net.has_parameters(i)]
        if wanted > len(weighted):
            raise ConfigError(f"--train {self.text}: {net.spec.name} has only {len(weighted)} stages with weights")
        return weighted[-wanted]


def place(net: Network, device: torch.device) -> None:
    """Move the model to its device in channels-last layout: 1.5-2x faster convolutions on CPU for the
    EfficientNet/ResNet-50 class of models (bench/README.md); names and values are unchanged."""
    net.module.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; the stubs omit it


def trainable_names(net: Network, policy: TrainPolicy) -> list[str]:
    start = policy.first_trainable(net)
    return [name for names in net.stage_tensors[start:] for name in names]


def batchnorm_names(net: Network) -> set[str]:
    """State names of every BatchNorm layer: what FedBN keeps on the client."""
    names: set[str] = set()
    for prefix, module in net.module.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            names.update(f"{prefix}.{key}" for key in module.state_dict())
    return names


@contextlib.contextmanager
def eval_mode(net: Network, stop: int | None = None) -> Iterator[None]:
    """Run stages[:stop] (all by default) in eval mode inside the block, then restore each stage's mode."""
    stages = [stage for _, stage in net.stages[:stop]]
    modes = [stage.training for stage in stages]
    for stage in stages:
        stage.eval()
    try:
        yield
    finally:
        for stage, mode in zip(stages, modes):
            stage.train(mode)


def set_train_mode(net: Network, first_trainable: int) -> None:
    """Frozen stages run in eval mode (BatchNorm statistics stay put); trainable ones in train mode."""
    for index, (_, stage) in enumerate(net.stages):
        stage.train(index >= first_trainable)
        for param in stage.parameters():
            param.requires_grad_(index >= first_trainable)
