"""Norm bounding around any strategy: an update whose parameters' joint L2 norm exceeds the bound is scaled
down to it (direction kept), so no single client can move the model further than the bound."""

from __future__ import annotations

from typing import Mapping

import torch

from server.strategies.base import Aggregator, RoundContext, WrappedAggregator, Wrapper
from server.validation import Update


class NormClip(Wrapper):
    def __init__(self, inner, max_norm: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        if not max_norm > 0:
            raise ValueError(f"norm bound must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return _Clipping(self.inner.open(template, context), self.max_norm, context.parameters)

    def describe(self) -> str:
        return f"{self.inner.describe()}, updates clipped to L2 norm {self.max_norm:g}"


class _Clipping(WrappedAggregator):
    def __init__(self, inner: Aggregator, max_norm: float, parameters: frozenset[str]) -> None:
        super().__init__(inner)
        self.max_norm, self.parameters = max_norm, parameters

    def transform(self, client: str, update: Update, weight: float) -> tuple[Update, float]:
        if clip_to_norm(update, self.parameters, self.max_norm):
            self.counted("clipped")
        return update, weight


def clip_to_norm(update: Update, parameters: frozenset[str], max_norm: float) -> bool:
    """Scale the parameter tensors in place so their joint L2 norm is at most max_norm; True when scaled."""
    norm = update.norm(parameters)
    if norm <= max_norm:
        return False
    scale = max_norm / norm
    for name in parameters:
        update.tensors[name].mul_(scale)
    update.forget_norms(parameters)
    return True
