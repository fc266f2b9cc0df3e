"""The server's evaluation on its test split, through the feature cache when the prefix is frozen."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedtl.common import features
from fedtl.common.evaluation import EvalResult, evaluate
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.models import Network, eval_mode


@dataclass(frozen=True)
class ServerEval:
    result: EvalResult
    seconds: float
    cache_used: bool
    cache_build_seconds: float | None  # set when the features were built or read from disk for this evaluation


class ServerEvaluator:
    def __init__(self, net: Network, test: ImageInputs, data_digest: str, first_trainable: int, cache_mode: str, batch_size: int) -> None:
        self.net = net
        self.test = test
        self.data_digest = data_digest
        self.first_trainable = first_trainable
        self.batch_size = batch_size
        self.decision = features.decide("off" if cache_mode == "off" else "auto", first_trainable, augment=False)
        self.cache = features.FeatureCache()

    def run(self) -> ServerEval:
        start = time.perf_counter()
        inputs: Inputs = self.test
        built = None
        if self.decision.use:
            inputs, report = self.cache.get("test", self.net, self.test, self.data_digest, self.first_trainable)
            built = None if report.source == "memory" else report.seconds
        result = evaluate(self.net, inputs, self.batch_size)
        return ServerEval(result, time.perf_counter() - start, self.decision.use, built)

    def outputs_finite(self, count: int = 64) -> bool:
        """Whether the model's outputs on the first `count` evaluation examples are finite: checked before a new global
        model is kept, whatever the aggregation rule (a poisoned aggregate must never become the model)."""
        inputs: Inputs = self.test
        if self.decision.use:
            inputs, _ = self.cache.get("test", self.net, self.test, self.data_digest, self.first_trainable)
        idx = torch.arange(min(count, len(inputs)))
        with torch.no_grad(), eval_mode(self.net):
            out = self.net.forward(inputs.batch(idx), start=inputs.start_stage)
        return bool(torch.isfinite(out).all())
