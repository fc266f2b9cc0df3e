"""Build a network by name with its weights and a fresh head; read local weights files without unpickling.

The pieces live in common/network.py (stages, train policies) and common/zoo.py (the models);
this module puts them together and re-exports what callers use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from common.errors import ConfigError, DataUnavailable
from common.network import ModelSpec, Network, TrainPolicy, batchnorm_names, eval_mode, place, set_train_mode, trainable_names
from common.zoo import MODELS, TinyCNN

__all__ = ["MODELS", "ModelSpec", "Network", "TinyCNN", "TrainPolicy", "batchnorm_names", "build_network", "eval_mode", "get_spec",
           "load_state_file", "place", "set_train_mode", "trainable_names"]

logger = logging.getLogger(__name__)


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
