"""The server's evaluation on its test split, through the feature cache when the prefix is frozen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import torch

from fedtl.common import features
from fedtl.common.batches import InputTransform
from fedtl.common.evaluation import EvalResult, evaluate
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.models import Network, eval_mode
from fedtl.server.divergence import FACTOR, LossWatch
from fedtl.server.events import Diverging, EvaluationDone, EventBus


@dataclass(frozen=True)
class ServerEval:
    result: EvalResult
    seconds: float
    cache_used: bool
    cache_build_seconds: float | None  # set when the features were built or read from disk for this evaluation


class ServerEvaluator:
    """The test images are decoded only when needed: a run whose test features are in the cache directory never
    decodes them (cache keys come from the split's identity, not its pixels)."""

    def __init__(self, net: Network, load_test: Callable[[], ImageInputs], labels: torch.Tensor, transform: InputTransform, data_digest: str,
                 first_trainable: int, cache_mode: str, batch_size: int, cache_dir: Path | None = None, purpose: str = "test") -> None:
        self.net = net
        self.purpose = purpose  # "test" (reported) or "validation" (picks the best model): their features are cached apart
        self._load_test = load_test
        self._test: ImageInputs | None = None
        self.labels = labels
        self.transform = transform
        self.data_digest = data_digest
        self.first_trainable = first_trainable
        self.batch_size = batch_size
        self.decision = features.decide("off" if cache_mode == "off" else "auto", first_trainable, augment=False)
        self.cache = features.FeatureCache(cache_dir, keep=8)
        self._key: str | None = None  # the test features' cache key, computed at the first evaluation (after any resume)

    @property
    def test(self) -> ImageInputs:
        if self._test is None:
            self._test = self._load_test()
        return self._test

    def _cached(self) -> tuple[Inputs, float | None]:
        """The test features and the seconds it took to build or read them (None: already in memory)."""
        if self._key is None:  # hashing the frozen prefix costs tens of ms; it never changes during a run (only trained stages move)
            self._key = features.cache_key(self.net, self.first_trainable, self.data_digest, self.transform.describe())
        key = self._key
        found = self.cache.lookup(self.purpose, key, self.labels, self.first_trainable)
        if found is None:
            found = self.cache.get(self.purpose, self.net, self.test, self.data_digest, self.first_trainable)
        inputs, report = found
        return inputs, None if report.source == "memory" else report.seconds

    def run(self) -> ServerEval:
        start = time.perf_counter()
        inputs, built = self._cached() if self.decision.use else (self.test, None)
        result = evaluate(self.net, inputs, self.batch_size)
        return ServerEval(result, time.perf_counter() - start, self.decision.use, built)

    def outputs_finite(self, count: int = 64) -> bool:
        """Whether the model's outputs on the first `count` evaluation examples are finite: checked before a new global
        model is kept, whatever the aggregation rule (a poisoned aggregate must never become the model)."""
        inputs = self._cached()[0] if self.decision.use else self.test
        idx = torch.arange(min(count, len(inputs)))
        with torch.no_grad(), eval_mode(self.net):
            out = self.net.forward(inputs.batch(idx), start=inputs.start_stage)
        return bool(torch.isfinite(out).all())


class Evaluations:
    """The coordinator's evaluation of the global model after a round, off the event loop: published as an event, and
    watched for divergence (a loss far above the initial model's says the server step is too large)."""

    def __init__(self, evaluator: ServerEvaluator, bus: EventBus, pool: Executor, watch: LossWatch, advice: str) -> None:
        self.evaluator, self.bus, self.pool, self.watch, self.advice = evaluator, bus, pool, watch, advice

    async def run(self, number: int) -> EvaluationDone:
        ev = await asyncio.get_running_loop().run_in_executor(self.pool, self.evaluator.run)
        event = EvaluationDone(number, ev.result.loss, ev.result.accuracy, ev.result.examples, ev.seconds, ev.cache_used,
                               ev.cache_build_seconds)
        self.bus.publish(event)
        reference = self.watch.observe(number, ev.result.loss)
        if reference is not None:
            self.bus.publish(Diverging(number, ev.result.loss, reference, (
                f"round {number}: test loss {ev.result.loss:.4g} is more than {FACTOR:g}x the reference {reference:.4g}: the global "
                f"model is diverging. {self.advice}")))
        return event
