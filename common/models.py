"""Build a network by name with its weights and a fresh head; read local weights files without unpickling.

The pieces live in common/network.py (stages, train policies) and common/zoo.py (the models);
this module puts them together and re-exports what callers use.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedtl.common import plugins, tensorcodec
from fedtl.common.errors import ConfigError, DataUnavailable
from fedtl.common.network import ModelSpec, Network, TrainPolicy, batchnorm_names, eval_mode, place, set_train_mode, trainable_names
from fedtl.common.zoo import MODELS, TinyCNN

__all__ = ["MODELS", "ModelSpec", "Network", "TinyCNN", "TrainPolicy", "TrainedInfo", "batchnorm_names", "build_network", "eval_mode",
           "get_spec", "known_model", "load_state_file", "load_trained", "place", "set_train_mode", "trainable_names"]

logger = logging.getLogger(__name__)


def known_model(name: str) -> bool:
    """A zoo name, a model function (`package.module:function`) or a timm model (`timm:NAME`)."""
    return name in MODELS or plugins.is_plugin(name) or (name.startswith("timm:") and len(name) > 5)


def _external_network(name: str, num_classes: int, weights: str, seed: int) -> Network:
    """A model function's or a timm model's network; `--weights FILE` loads all but the head (the classes differ)."""
    torch.manual_seed(seed)
    if name.startswith("timm:"):
        module, stages, head_prefix, cfg = plugins.timm_parts(name[5:], num_classes)
        mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
    else:
        module, stages, made = plugins.build_plugin_model(name, num_classes)
        head_prefix = f"{stages[-1][0].replace('.', '_')}."
        mean, std, size = made.mean, made.std, made.image_size
    if weights == "imagenet":
        raise ConfigError(f"--weights imagenet with --model {name}: give the pretrained weights as a file (--weights PATH), "
                          "or load them inside the model function and use --weights none")
    if weights != "none":
        state = {k: v for k, v in load_state_file(Path(weights)).items() if not k.startswith(head_prefix)}
        try:
            result = module.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise DataUnavailable(f"--weights {weights}: not weights of {name} ({str(exc).strip().splitlines()[-1][:200]})") from None
        missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
        if missing or result.unexpected_keys:
            raise DataUnavailable(f"--weights {weights}: not weights of {name} (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    spec = ModelSpec(name, lambda: module, lambda m: stages, lambda m, c: None, head_prefix, tuple(mean), tuple(std), size or 32)
    module.eval()
    return Network(spec, module, stages, num_classes)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"--model {name!r} is unknown; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_network(name: str, num_classes: int, weights: str = "none", seed: int = 0) -> Network:
    """Build `name` with `weights` ('none', 'imagenet' or a file) and a fresh `num_classes` head.

    The new head is created right after `torch.manual_seed(seed)`, so a run's initial model is
    reproducible from its flags alone.
    """
    if num_classes < 2:
        raise ConfigError(f"--num-classes must be at least 2, got {num_classes}")
    if plugins.is_plugin(name) or name.startswith("timm:"):
        return _external_network(name, num_classes, weights, seed)
    spec = get_spec(name)
    torch.manual_seed(seed)
    module = spec.build()
    loaded = _load_weights(spec, weights)
    if loaded is not None:
        backbone = {k: v for k, v in loaded.items() if not k.startswith(spec.head_prefix)}
        try:
            result = module.load_state_dict(backbone, strict=False)
        except RuntimeError as exc:  # shapes that do not fit: another architecture or size
            first = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
            raise DataUnavailable(f"--weights {weights}: not {name} weights ({first[0].strip()})") from None
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


@dataclass(frozen=True)
class TrainedInfo:
    """What a saved model was trained for: read from its file's metadata."""

    model: str
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    round: int
    run_id: str


def load_trained(path: str | Path) -> tuple[nn.Module, TrainedInfo]:
    """A final (or per-round) model written by the server, rebuilt and in eval mode, with its classes and input transform."""
    from fedtl.common import checkpoint

    path = Path(path)
    try:
        decoded = checkpoint.load_tensors(path)
    except (OSError, ValueError) as exc:
        raise DataUnavailable(f"{path}: not a model saved by this tool ({type(exc).__name__}: {exc})") from None
    net, info = rebuild_trained(decoded, str(path))
    return net.module, info


def rebuild_trained(decoded: tensorcodec.Decoded, where: str, allowed_plugins: Collection[str] | None = None) -> tuple[Network, TrainedInfo]:
    """The network a saved model's file describes, with its weights, in eval mode (a file on disk, or one received);
    a model named by module is built only from `allowed_plugins` when they are given (a site's --allow-plugin)."""
    meta = decoded.metadata
    try:
        info = TrainedInfo(meta["model"], tuple(json.loads(meta.get("class_names", "[]"))), int(meta["image_size"]),
                           tuple(float(x) for x in meta["mean"].split(",")), tuple(float(x) for x in meta["std"].split(",")),
                           int(meta.get("round", 0)), meta.get("run_id", ""))
        num_classes = int(meta["num_classes"])
    except (KeyError, ValueError) as exc:
        raise DataUnavailable(f"{where}: not a model saved by this tool ({type(exc).__name__}: {exc})") from None
    if allowed_plugins is not None:
        plugins.check_allowed(info.model, allowed_plugins)
    net = build_network(info.model, num_classes, "none")
    try:
        net.module.load_state_dict(decoded.tensors)
    except RuntimeError as exc:
        raise DataUnavailable(f"{where}: its tensors do not fit a {info.model} ({str(exc)[:200]})") from None
    net.module.eval()
    return net, info


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
