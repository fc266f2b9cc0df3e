"""The server's evaluation on its test split, through the feature cache when the prefix is frozen."""

from __future__ import annotations

import time
from dataclasses import dataclass

from common import features
from common.evaluation import EvalResult, evaluate
from common.inputs import ImageInputs, Inputs
from common.models import Network


@dataclass(frozen=True)
class ServerEval:
    result: EvalResult
    seconds: float
    cache: str  # for the round log


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
        note = f"off ({self.decision.reason})"
        if self.decision.use:
            inputs, report = self.cache.get("test", self.net, self.test, self.data_digest, self.first_trainable)
            note = "on" if report.source == "memory" else f"on (built in {report.seconds:.2f}s)"
        result = evaluate(self.net, inputs, self.batch_size)
        return ServerEval(result, time.perf_counter() - start, note)
