"""The client's round logic without a network: feature cache exactness and staleness, FedBN, FedProx,
segment cache by digest (hit, miss, stale), personalisation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedtl.client.runtime import ClientRuntime
from fedtl.common import codecs, features, tensorcodec, wire
from fedtl.common.batches import InputTransform
from fedtl.common.config import DataAssignment, ModelRecipe, TrainConfig, TrainTask
from fedtl.common.data import open_split
from fedtl.common.errors import ConfigError
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import TrainPolicy, batchnorm_names, build_network
from fedtl.common.training import train_local
from fedtl.protos import tensors_pb2 as tpb
from fedtl.server.model_state import GlobalModel

DATA = "synthetic:400"


class FakeServer:
    """The server's side of a round, minus the network: prepared segments served by digest."""

    def __init__(self, policy: str = "head", fedbn: bool = False, seed: int = 0) -> None:
        self.net = build_network("tiny_cnn", 10, "none", seed=seed)
        self.model = GlobalModel(self.net, TrainPolicy.parse(policy), fedbn, chunk_bytes=4096)
        self.recipe = ModelRecipe("tiny_cnn", 10, 32, (0.5,) * 3, (0.5,) * 3, policy, self.model.client_local)
        self.downloads: list[str] = []

    def task(self, round_number: int, config: TrainConfig, holdout: float = 0.0, evaluate: bool = False) -> TrainTask:
        static, [trainable] = self.model.prepare_static(), self.model.prepare_trainable()
        self.segments = {s.manifest.sha256: s for s in (static, trainable) if s is not None}
        refs = tuple(s.ref for s in (static, trainable) if s is not None)
        data = DataAssignment(0, 2, "iid", seed=1, holdout_fraction=holdout)
        return TrainTask(round_number, refs, trainable.manifest.sha256, config, data, evaluate)

    def aggregate(self) -> None:
        """Stand-in for a round's aggregation: the trainable weights move, the frozen ones do not."""
        with torch.no_grad():
            self.net.module.fc.bias.add_(0.01)

    def download(self, ref, buffer=None):  # type: ignore[no-untyped-def]
        self.downloads.append(ref.name)
        segment = self.segments[ref.sha256]
        return wire.receive_blob([tpb.Chunk.FromString(m) for m in segment.messages], None, 1 << 30, buffer)


def runtime(tmp_path: Path, name: str = "c") -> ClientRuntime:
    return ClientRuntime(DATA, tmp_path / "cache", tmp_path / name, torch.device("cpu"), amp=False, name=name)


def update_of(outcome) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The update as the server receives it: encoded by the raw codec, decoded back."""
    return dict(tensorcodec.decode(codecs.get("raw").encode(outcome.update)).tensors)


CONFIG = TrainConfig(local_epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=3)


@pytest.mark.parametrize("policy", ["head", "blocks:2"])
def test_training_on_cached_features_equals_training_through_the_whole_network(tmp_path: Path, policy: str) -> None:
    results = {}
    for mode in ("on", "off"):
        server = FakeServer(policy)
        client = runtime(tmp_path, mode)
        client.set_recipe(server.recipe)
        outcome = client.run_round(server.task(1, replace(CONFIG, feature_cache=mode)), server.download)
        assert outcome.metrics.feature_cache == (mode == "on")
        results[mode] = update_of(outcome)
    assert results["on"].keys() == results["off"].keys()
    for name in results["on"]:
        assert torch.allclose(results["on"][name], results["off"][name], rtol=1e-5, atol=1e-6), name


def test_the_cache_is_built_once_and_reused_across_rounds_and_restarts(tmp_path: Path) -> None:
    server = FakeServer("head")
    client = runtime(tmp_path)
    client.set_recipe(server.recipe)
    first = client.run_round(server.task(1, CONFIG), server.download)
    assert first.metrics.cache_build_seconds_train is not None
    second = client.run_round(server.task(2, CONFIG), server.download)
    assert second.metrics.cache_build_seconds_train is None  # served from memory
    restarted = runtime(tmp_path)
    restarted.set_recipe(server.recipe)
    restarted.run_round(server.task(3, CONFIG), server.download)
    assert len(list((tmp_path / "c" / "features").glob("features-train-*.safetensors"))) == 1


def test_a_stale_cache_is_never_used(tmp_path: Path) -> None:
    net = build_network("tiny_cnn", 10, "none")
    data = open_split(DATA, "train", tmp_path).load()
    images = ImageInputs.of(data, InputTransform((0.5,) * 3, (0.5,) * 3, 32), torch.device("cpu"))
    stop = TrainPolicy.parse("head").first_trainable(net)
    key = features.cache_key(net, stop, data.digest(), images.transform.describe())
    with torch.no_grad():
        net.module.conv1[0].weight[0, 0, 0, 0] += 1e-3  # a frozen weight changed
    assert features.cache_key(net, stop, data.digest(), images.transform.describe()) != key
    other_data = data.subset(range(len(data) - 1))
    assert features.cache_key(net, stop, other_data.digest(), images.transform.describe()) != features.cache_key(net, stop, data.digest(), images.transform.describe())
    bigger = InputTransform((0.5,) * 3, (0.5,) * 3, 64)
    assert bigger.describe() != images.transform.describe()
    cache = features.FeatureCache(tmp_path / "f")
    _, report = cache.get("train", net, images, data.digest(), stop)
    assert report.source == "computed"
    path = next((tmp_path / "f").glob("*.safetensors"))
    path.write_bytes(b"damaged")
    _, report = features.FeatureCache(tmp_path / "f").get("train", net, images, data.digest(), stop)
    assert report.source == "computed"  # a damaged file is rebuilt, not trusted


def test_augmentation_turns_the_cache_off_and_says_why() -> None:
    decision = features.decide("auto", 3, augment=True)
    assert not decision.use and "augmentation" in decision.reason
    assert not features.decide("auto", 0, augment=False).use
    assert features.decide("auto", 3, augment=False).use
    with pytest.raises(ConfigError, match="cannot be exact"):
        features.decide("on", 3, augment=True)


def test_fedbn_keeps_batchnorm_on_the_client(tmp_path: Path) -> None:
    server = FakeServer("all", fedbn=True)
    bn = batchnorm_names(server.net)
    assert not bn & set(server.model.trainable) and bn <= set(server.model.static)
    client = runtime(tmp_path)
    client.set_recipe(server.recipe)
    update = update_of(client.run_round(server.task(1, CONFIG), server.download))
    assert not bn & set(update)  # BatchNorm never leaves the client
    local = dict(client.net.module.state_dict())
    trained_mean = local["conv1.1.running_mean"].clone()
    assert not torch.equal(trained_mean, server.net.module.state_dict()["conv1.1.running_mean"])
    client.run_round(server.task(2, CONFIG), server.download)  # the server's BN values do not overwrite the local ones
    assert (tmp_path / "c" / "local_state.safetensors").exists()
    restarted = runtime(tmp_path)
    restarted.set_recipe(server.recipe)
    assert torch.equal(restarted.net.module.state_dict()["conv1.1.running_mean"], client.net.module.state_dict()["conv1.1.running_mean"])


def test_fedprox_pulls_local_training_towards_the_global_model(tmp_path: Path) -> None:
    deltas = {}
    for mu in (0.0, 5.0):
        server = FakeServer("all", seed=1)
        client = runtime(tmp_path, f"mu{mu}")
        client.set_recipe(server.recipe)
        deltas[mu] = update_of(client.run_round(server.task(1, replace(CONFIG, proximal_mu=mu, feature_cache="off")), server.download))
    params = {n for n, _ in FakeServer("all").net.module.named_parameters()}
    norm = {mu: sum(float(d[n].norm()) ** 2 for n in params) ** 0.5 for mu, d in deltas.items()}
    assert norm[5.0] < 0.8 * norm[0.0]


def test_fedprox_gradient_is_mu_times_the_distance(tmp_path: Path) -> None:
    """One plain SGD step from w != w0: the step is lr * (grad_loss + mu (w - w0))."""
    net = build_network("tiny_cnn", 10, "none", seed=0)
    data = open_split(DATA, "train", tmp_path).load(range(16))
    inputs = ImageInputs.of(data, InputTransform((0.5,) * 3, (0.5,) * 3, 32), torch.device("cpu"))
    first = TrainPolicy.parse("head").first_trainable(net)
    reference = {n: p.detach().clone() - 0.1 for n, p in net.module.named_parameters() if n.startswith("fc.")}
    config = TrainConfig(batch_size=16, lr=0.1, momentum=0.0, weight_decay=0.0, max_steps=1, seed=0)
    start = {n: p.detach().clone() for n, p in net.module.named_parameters() if n.startswith("fc.")}
    train_local(net, first, inputs, config, seed=0)
    plain = {n: p.detach().clone() for n, p in net.module.named_parameters() if n.startswith("fc.")}
    with torch.no_grad():
        for n, p in net.module.named_parameters():
            if n in start:
                p.copy_(start[n])
    train_local(net, first, inputs, replace(config, proximal_mu=2.0), seed=0, reference=reference)
    for n, p in net.module.named_parameters():
        if n in start:
            expected = plain[n] - 0.1 * 2.0 * (start[n] - reference[n])
            assert torch.allclose(p.detach(), expected, atol=1e-6), n


def test_segment_cache_hit_miss_and_stale(tmp_path: Path) -> None:
    server = FakeServer("head")
    client = runtime(tmp_path)
    client.set_recipe(server.recipe)
    client.run_round(server.task(1, CONFIG), server.download)
    assert server.downloads == ["static", "trainable"]  # miss: everything
    server.aggregate()
    client.run_round(server.task(2, CONFIG), server.download)
    assert server.downloads[2:] == ["trainable"]  # hit: the frozen backbone is not sent again
    server.aggregate()
    restarted = runtime(tmp_path)
    restarted.set_recipe(server.recipe)
    restarted.run_round(server.task(3, CONFIG), server.download)
    assert server.downloads[3:] == ["trainable"]  # hit from disk after a restart (sha256 re-checked)
    other = FakeServer("head", seed=9)  # a different backbone: the cached one is stale
    with torch.no_grad():
        other.net.module.conv1[0].weight.add_(1.0)
    restarted.run_round(other.task(4, CONFIG), other.download)
    assert other.downloads == ["static", "trainable"]
    assert torch.equal(restarted.net.module.conv1[0].weight, other.net.module.conv1[0].weight)
    damaged = next((tmp_path / "c" / "segments").glob("static-*.safetensors"))
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    fresh = runtime(tmp_path)
    fresh.set_recipe(other.recipe)
    fresh.run_round(other.task(5, CONFIG), other.download)
    assert other.downloads[2:] == ["static", "trainable"]  # damaged copy refused, downloaded again


def test_personal_head_is_trained_reported_and_kept_local(tmp_path: Path) -> None:
    server = FakeServer("head")
    client = runtime(tmp_path)
    client.set_recipe(server.recipe)
    config = replace(CONFIG, personal_epochs=3)
    outcome = client.run_round(server.task(1, config, holdout=0.25, evaluate=True), server.download)
    m = outcome.metrics
    assert m.personal_accuracy is not None and m.eval_accuracy is not None
    assert 0 <= m.personal_accuracy <= 1 and 0 <= m.eval_accuracy <= 1 and m.eval_examples == 50
    assert set(update_of(outcome)) == {"fc.weight", "fc.bias"}  # the shared head only
    saved = (tmp_path / "c" / "personal_head.safetensors")
    assert saved.exists()
    restarted = runtime(tmp_path)
    restarted.set_recipe(server.recipe)
    assert restarted._personal_head is not None
    assert torch.equal(restarted._personal_head.weight, client._personal_head.weight)
