"""What a real client keeps between rounds (model, shard, caches, its personal head, FedBN's local statistics) and how
it prepares each round for client/local_round.py. No network: downloads come in through a callable and the update goes
out as an UpdateSource (the caller encodes it with the round's codec), so this is testable on its own."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedtl.client.local_round import LocalResult, LocalRound, round_seed
from fedtl.client.local_state import LocalState
from fedtl.client.privacy import PrivacyBudget
from fedtl.client.segments import SegmentStore
from fedtl.client.shard import Shard, load_shard
from fedtl.common import features, plugins
from fedtl.common.batches import InputTransform
from fedtl.common.classes import label_map
from fedtl.common.codecs.delta import DELTA_SEGMENT
from fedtl.common.config import DataAssignment, ModelRecipe, SegmentRef, TrainConfig, TrainTask
from fedtl.common.data import ImageSet, Source, open_split
from fedtl.common.errors import DataUnavailable
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.metrics import ClientMetrics
from fedtl.common.models import Network, TrainPolicy, batchnorm_names, build_network, place
from fedtl.common.training import Progress

logger = logging.getLogger(__name__)


class ClientRuntime:
    def __init__(self, data: str, data_cache: Path, workdir: Path, device: torch.device, amp: bool, name: str,
                 privacy: PrivacyBudget | None = None) -> None:
        self.data = data
        self.data_cache = data_cache
        self.workdir = workdir
        self.device = device
        self.amp = amp
        self.name = name
        self.privacy = privacy or PrivacyBudget(workdir, 0.0)
        self.run_id = ""  # the run joined (its record-level DP noise is calibrated once per run)
        self.segments = SegmentStore(workdir / "segments")
        self.features = features.FeatureCache(workdir / "features")
        self.local = LocalState(workdir)
        self.recipe: ModelRecipe | None = None
        self.net: Network | None = None
        self.allowed_plugins: tuple[str, ...] = ()  # modules a coordinator may name as the model (--allow-plugin)
        self.first_trainable = 0
        self.local_names: set[str] = set()
        self._source: Source | None = None
        self._shard: Shard | None = None
        self._inputs: dict[str, ImageInputs] = {}
        self._loaded: dict[str, str] = {}  # segment name -> digest currently in the model
        self._has_local_state = False
        self._personal_head: torch.nn.Module | None = None
        self._functions: dict[str, Callable[..., Any]] = {}  # the operator's own functions, by reference (--train-fn, --evaluate-fn)

    # ---------------------------------------------------------------- set-up

    def open_data(self) -> Source:
        """Open the training split (labels only) so a missing dataset fails before joining."""
        if self._source is None:
            self._source = open_split(self.data, "train", self.data_cache)
        return self._source

    def set_recipe(self, recipe: ModelRecipe) -> None:
        if recipe == self.recipe:
            return
        source = self.open_data()
        if recipe.class_names:
            mapping = label_map(source.classes, recipe.class_names, f"--data {self.data}")
            if mapping is not None:
                logger.info("my class folders are the federation's in another order: mapped onto its order (%s)",
                            ", ".join(recipe.class_names[:10]))
                self._source = source.relabelled(mapping, list(recipe.class_names))
        elif len(source.classes) != recipe.num_classes:
            raise DataUnavailable(
                f"--data {self.data} has {len(source.classes)} classes, but the federation trains a {recipe.num_classes}-class model"
            )
        plugins.check_allowed(recipe.model, self.allowed_plugins)  # the coordinator names code; this client's operator allows it
        net = build_network(recipe.model, recipe.num_classes, "none", seed=0)
        place(net, self.device)
        self.recipe, self.net = recipe, net
        self.first_trainable = TrainPolicy.parse(recipe.train_policy).first_trainable(net)
        self.local_names = batchnorm_names(net) if "batchnorm" in recipe.client_local else set()
        self._loaded.clear()
        self._inputs.clear()
        self._shard = None
        self._has_local_state = self.local.load_tensors(net, self.local_names)
        self._personal_head = self.local.load_head(net)
        logger.info("model %s, %d classes, %d px, train %s%s on %s", recipe.model, recipe.num_classes, recipe.image_size,
                    recipe.train_policy, ", BatchNorm kept local (FedBN)" if self.local_names else "", self.device)

    # ---------------------------------------------------------------- one round

    def run_round(self, task: TrainTask, download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray],
                  progress: Progress | None = None) -> LocalResult:
        """Download what the task needs, prepare the shard's inputs, and run the round (client/local_round.py)."""
        if self.net is None or self.recipe is None:
            raise RuntimeError("run_round before set_recipe")
        net, cfg = self.net, task.config
        own_train, own_evaluate = self._user_functions(cfg)  # before any download: code this client's operator did not allow is refused
        shard = self._load_shard(task.data)
        metrics = ClientMetrics()
        start = time.perf_counter()
        received = self._load_segments(task.segments, download)
        metrics.download_seconds = time.perf_counter() - start
        identity = str(shard.assignment.partition_index) if shard.assignment.scheme != "none" else self.name

        # the operator's functions get the whole model and images: the feature cache serves the built-in loops only
        decision = features.decide("off" if own_train or own_evaluate else cfg.feature_cache, self.first_trainable, cfg.augment)
        train_inputs = self._inputs_for("train", shard.train, shard.train_digest, cfg.augment, decision.use, metrics)
        metrics.feature_cache = decision.use
        holdout = (self._inputs_for("holdout", shard.holdout, shard.holdout_digest, False, decision.use, metrics)
                   if task.evaluate and len(shard.holdout) else None)
        private = self.privacy.for_run(self.run_id) if cfg.private else None
        local = LocalRound(net, self.first_trainable, cfg, round_seed(cfg.seed, task.round, identity), train_inputs, holdout, received,
                           own_train, own_evaluate, private, progress, self.amp, metrics)
        result, head = local.run(self._personal_head)
        if head is not None:
            self._personal_head = head
            self.local.save_head(head, self.recipe.model, self.run_id)
        if self.local_names:
            self.local.save_tensors(net, self.local_names, self.recipe.model)
        return result

    def _user_functions(self, cfg: TrainConfig) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
        """The coordinator-named training and evaluation functions, imported only from modules this client allows."""
        found: list[Callable[..., Any] | None] = []
        for ref, what, flag in ((cfg.train_fn, "training function", "--train-fn"), (cfg.evaluate_fn, "evaluation function", "--evaluate-fn")):
            if not ref:
                found.append(None)
                continue
            plugins.check_allowed(ref, self.allowed_plugins, what)
            if ref not in self._functions:
                self._functions[ref] = plugins.load(ref, flag)
            found.append(self._functions[ref])
        return found[0], found[1]

    # ---------------------------------------------------------------- helpers

    def _load_segments(self, refs: tuple[SegmentRef, ...], download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray]) -> dict[str, torch.Tensor]:
        """Put the global weights into the model (keeping client-local tensors); return the trainable segment."""
        assert self.net is not None
        state = self.net.module.state_dict()
        received: dict[str, torch.Tensor] = {}
        specs = {n: (t.dtype, tuple(t.shape)) for n, t in state.items()}
        delta = next((r for r in refs if r.name == DELTA_SEGMENT), None)
        for ref in refs:
            if ref.name == DELTA_SEGMENT:
                continue
            rebuilt = self.segments.fetch_delta(ref, delta, download) if delta is not None and ref.name == "trainable" else None
            moved: SegmentRef = ref
            if rebuilt is not None and delta is not None:
                tensors, cached, moved = rebuilt, False, delta
            else:
                tensors, cached = self.segments.fetch(ref, download, specs)
            if ref.name == "trainable":
                received = tensors
            elif self._loaded.get(ref.name) == ref.sha256:
                continue  # the static segment is already in the model
            unknown = set(tensors) - set(state)
            if unknown:
                raise DataUnavailable(f"server sent tensors this model does not have: {sorted(unknown)[:5]}")
            with torch.no_grad():
                for name, tensor in tensors.items():
                    if name in self.local_names and self._has_local_state:
                        continue
                    state[name].copy_(tensor)
            self._loaded[ref.name] = ref.sha256
            if not cached:
                logger.info("downloaded %s weights: %.2f MB%s", ref.name, moved.total_bytes / 1e6,
                            "" if moved.encoding == "raw" else f" ({moved.name}, {moved.encoding})")
        self._has_local_state = self._has_local_state or bool(self.local_names)
        return received

    def _load_shard(self, assignment: DataAssignment) -> Shard:
        if self._shard is None or self._shard.assignment != assignment:
            self._shard = load_shard(self.open_data(), assignment)
            self._inputs.clear()
        return self._shard

    def _inputs_for(self, purpose: str, data: ImageSet, digest: str, augment: bool, use_cache: bool, metrics: ClientMetrics) -> Inputs:
        assert self.net is not None and self.recipe is not None
        images = self._inputs.get(purpose)
        if images is None or images.transform.augment != augment:
            transform = InputTransform(self.recipe.mean, self.recipe.std, self.recipe.image_size, augment)
            images = ImageInputs.of(data, transform, self.device)
            self._inputs[purpose] = images
        if not use_cache:
            return images
        cached, report = self.features.get(purpose, self.net, images, digest, self.first_trainable)
        if report.source != "memory":
            setattr(metrics, f"cache_build_seconds_{purpose}", report.seconds)
        return cached
