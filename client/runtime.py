"""What a client keeps between rounds (model, shard, caches) and what it does in one round. No network:
downloads come in through a callable and the update goes out as an UpdateSource (the caller encodes
it with the round's codec), so this is testable on its own."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from fedtl.client.local_state import LocalState
from fedtl.client.privacy import PrivacyBudget
from fedtl.client.segments import SegmentStore
from fedtl.client.shard import Shard, load_shard
from fedtl.common import plugins
from fedtl.common import user_code
from fedtl.common.training import Progress, TrainResult, fit_head, mean_gradient, train_local
from fedtl.client.update import update_source
from fedtl.common import features
from fedtl.common.batches import InputTransform
from fedtl.common.classes import label_map
from fedtl.common.codecs import UpdateSource
from fedtl.common.codecs.delta import DELTA_SEGMENT
from fedtl.common.config import DataAssignment, ModelRecipe, SegmentRef, TrainTask, UpdateKind
from fedtl.common.data import ImageSet, Source, open_split
from fedtl.common.errors import DataUnavailable
from fedtl.common.evaluation import evaluate
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.models import Network, TrainPolicy, batchnorm_names, build_network, place

logger = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    num_examples: int
    kind: UpdateKind
    update: UpdateSource  # reads the live model: encode it before the next round
    metrics: dict[str, float] = field(default_factory=dict)


def round_seed(run_seed: int, round_number: int, identity: str) -> int:
    """Per-client, per-round seed: the same after a restart, different across clients and rounds."""
    digest = hashlib.sha256(f"{run_seed}:{round_number}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ClientRuntime:
    def __init__(self, data: str, data_cache, workdir, device: torch.device, amp: bool, name: str,
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
        self._functions: dict[str, Callable] = {}  # the operator's own functions, by reference (--train-fn, --evaluate-fn)

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

    def run_round(self, task: TrainTask, download: Callable[[SegmentRef, bytearray | None], memoryview | bytearray], progress: Progress | None = None) -> RoundOutcome:
        if self.net is None or self.recipe is None:
            raise RuntimeError("run_round before set_recipe")
        net, cfg = self.net, task.config
        self.privacy.check_task(task)  # before anything is downloaded: a refused task costs nothing
        own_train, own_evaluate = self._user_functions(cfg)  # likewise: code this client's operator did not allow is refused first
        shard = self._load_shard(task.data)
        start = time.perf_counter()
        received = self._load_segments(task.segments, download)
        metrics: dict[str, float] = {"download_seconds": time.perf_counter() - start}
        identity = str(shard.assignment.partition_index) if shard.assignment.scheme != "none" else self.name
        seed = round_seed(cfg.seed, task.round, identity)

        # the operator's functions get the whole model and images: the feature cache serves the built-in loops only
        decision = features.decide("off" if own_train or own_evaluate else cfg.feature_cache, self.first_trainable, cfg.augment)
        train_inputs = self._inputs_for("train", shard.train, shard.train_digest, cfg.augment, decision.use, metrics)
        metrics["feature_cache"] = 1.0 if decision.use else 0.0
        if task.evaluate and len(shard.holdout):
            held = self._inputs_for("holdout", shard.holdout, shard.holdout_digest, False, decision.use, metrics)
            if own_evaluate is not None:
                metrics.update(user_code.evaluate_with(own_evaluate, net, held, cfg, seed), eval_examples=float(len(held)))
            else:
                result = evaluate(net, held)
                metrics.update(eval_loss=result.loss, eval_accuracy=result.accuracy, eval_examples=float(result.examples))

        if cfg.personal_epochs:
            self._personalise(task, shard, train_inputs, seed, metrics)

        params = self._param_names()
        trained = [n for n in received if n in params]
        grads: dict[str, torch.Tensor] = {}
        if cfg.update_kind == UpdateKind.GRADIENT:
            grads, result = mean_gradient(net, self.first_trainable, train_inputs, cfg, seed, self.amp)
        elif cfg.private:
            result, spent = self.privacy.train(net, self.first_trainable, train_inputs, cfg, self.run_id, progress)
            metrics.update(spent)
        elif own_train is not None:
            reported, seconds = user_code.train_with(own_train, net, self.first_trainable, train_inputs, cfg, seed)
            result = TrainResult(len(train_inputs), reported.pop("train_loss", math.nan), reported.pop("train_accuracy", math.nan), 0, seconds)
            metrics.update(reported)
        else:
            reference = {n: received[n].to(self.device) for n in trained} if cfg.proximal_mu > 0 else None
            result = train_local(net, self.first_trainable, train_inputs, cfg, seed, reference, progress, self.amp)
        metrics.update({k: v for k, v in (("train_loss", result.loss), ("train_accuracy", result.accuracy), ("train_seconds", result.seconds),
                                          ("steps", float(result.steps))) if math.isfinite(v)})
        if self.local_names:
            self.local.save_tensors(net, self.local_names, self.recipe.model)
        # FedAvg weighs by the shard's size (the examples trained on, whatever the epochs); FedSGD by the examples its gradient saw
        examples = result.num_examples if cfg.update_kind == UpdateKind.GRADIENT else min(result.num_examples, len(train_inputs))
        return RoundOutcome(examples, cfg.update_kind, update_source(net.module.state_dict(), received, grads, frozenset(params)), metrics)

    def _user_functions(self, cfg) -> tuple[Callable | None, Callable | None]:  # type: ignore[no-untyped-def]
        """The coordinator-named training and evaluation functions, imported only from modules this client allows."""
        found: list[Callable | None] = []
        for ref, what, flag in ((cfg.train_fn, "training function", "--train-fn"), (cfg.evaluate_fn, "evaluation function", "--evaluate-fn")):
            if not ref:
                found.append(None)
                continue
            plugins.check_allowed(ref, self.allowed_plugins, what)
            if ref not in self._functions:
                self._functions[ref] = plugins.load(ref, flag)
            found.append(self._functions[ref])
        return found[0], found[1]

    # ---------------------------------------------------------------- personalisation

    def _personalise(self, task: TrainTask, shard: Shard, train_inputs: Inputs, seed: int, metrics: dict[str, float]) -> None:
        """Fine-tune this client's own head on the received global backbone's features, and keep it.

        The personal head starts from the global head the first time and then carries over from round
        to round (saved in the work directory); it is never uploaded. Runs before the shared local
        training, so it sees exactly the global backbone, and draws from its own seed.
        """
        assert self.net is not None
        net, cfg = self.net, task.config
        self.privacy.check_task(task)  # before anything is downloaded: a refused task costs nothing
        head_index = len(net.stages) - 1
        train_features = features.features_at(self.net, train_inputs, head_index)
        head = self._personal_head if self._personal_head is not None else copy.deepcopy(net.stages[head_index][1])
        result = fit_head(head, train_features, cfg, cfg.personal_epochs, seed ^ 0x5EED)
        self._personal_head = head
        metrics.update(personal_train_loss=result.loss, personal_seconds=result.seconds)
        if task.evaluate and len(shard.holdout):
            decision = features.decide(cfg.feature_cache, self.first_trainable, False)
            held = self._inputs_for("holdout", shard.holdout, shard.holdout_digest, False, decision.use, metrics)
            held_features = features.features_at(self.net, held, head_index)
            with torch.no_grad():
                logits = head(held_features.features)
            metrics["personal_accuracy"] = float((logits.argmax(1) == held_features.labels).float().mean())
        self.local.save_head(head, self.recipe.model if self.recipe else "")

    # ---------------------------------------------------------------- helpers

    def _param_names(self) -> set[str]:
        assert self.net is not None
        return {n for n, _ in self.net.module.named_parameters()}

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
            if rebuilt is not None:
                tensors, cached, moved = rebuilt, False, delta
            else:
                (tensors, cached), moved = self.segments.fetch(ref, download, specs), ref
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

    def _inputs_for(self, purpose: str, data: ImageSet, digest: str, augment: bool, use_cache: bool, metrics: dict[str, float]) -> Inputs:
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
            metrics[f"cache_build_seconds_{purpose}"] = report.seconds
        return cached
