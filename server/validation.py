"""Check an update against what the round expects, before anything reaches the aggregate. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from common import tensorcodec
from common.config import UpdateHeader, UpdateKind
from common.errors import UpdateRejected

# An update blob may exceed the payload by at most this much header (names, shapes, offsets).
HEADER_ALLOWANCE = 1 << 20


@dataclass(frozen=True)
class Expectation:
    """What every update of one round must look like."""

    round: int
    base_digest: str
    kind: UpdateKind
    specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
    parameters: frozenset[str]  # which names are parameters (norm bound applies to these)
    payload_bytes: int
    max_examples: int = 1 << 40

    @property
    def max_blob_bytes(self) -> int:
        return self.payload_bytes + HEADER_ALLOWANCE


def check_header(expect: Expectation, header: UpdateHeader) -> None:
    """Refuse by header alone (no data received yet): wrong round, base, kind, size or count."""
    if header.round != expect.round:
        raise UpdateRejected("stale_round", f"update answers round {header.round}, but round {expect.round} is open")
    if header.base_digest != expect.base_digest:
        raise UpdateRejected(
            "wrong_base", f"update was computed from model {header.base_digest[:16]}…, round {expect.round} sent {expect.base_digest[:16]}…"
        )
    if header.kind != expect.kind:
        raise UpdateRejected("wrong_kind", f"update kind {header.kind.name}, this run expects {expect.kind.name}")
    if not 0 < header.num_examples <= expect.max_examples:
        raise UpdateRejected("bad_num_examples", f"num_examples {header.num_examples} must be in 1..{expect.max_examples}")
    if header.total_bytes > expect.max_blob_bytes:
        raise UpdateRejected("oversize", f"update announces {header.total_bytes} bytes; the model's update is at most {expect.max_blob_bytes}")
    if header.total_bytes < expect.payload_bytes:
        raise UpdateRejected("undersize", f"update announces {header.total_bytes} bytes, less than the {expect.payload_bytes} of tensor data expected")
    bad = [k for k, v in header.metrics.items() if not math.isfinite(v)]
    if bad:
        raise UpdateRejected("bad_metrics", f"metrics {bad} are not finite")


def check_tensors(expect: Expectation, tensors: Mapping[str, torch.Tensor]) -> None:
    """Names, dtypes and shapes exactly as expected, and every value finite."""
    got, want = set(tensors), set(expect.specs)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        raise UpdateRejected("wrong_names", f"update tensors differ from the model's: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, tensor in tensors.items():
        dtype, shape = expect.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise UpdateRejected(
                "wrong_shape", f"tensor {name}: got {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {shape}"
            )
    bad = tensorcodec.non_finite(tensors)
    if bad:
        raise UpdateRejected("non_finite", f"tensors {bad[:5]} hold NaN or Inf")


def update_norm(tensors: Mapping[str, torch.Tensor], parameters: frozenset[str]) -> float:
    """L2 norm over the parameter tensors of an update (buffers excluded)."""
    total = 0.0
    for name in parameters:
        t = tensors[name]
        total += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 if t.numel() else 0.0
    return math.sqrt(total)


def clip_to_norm(tensors: Mapping[str, torch.Tensor], parameters: frozenset[str], max_norm: float) -> tuple[float, bool]:
    """Scale parameter tensors in place so their joint L2 norm is at most max_norm; return (norm before, clipped)."""
    norm = update_norm(tensors, parameters)
    if max_norm <= 0 or norm <= max_norm:
        return norm, False
    scale = max_norm / norm
    for name in parameters:
        tensors[name].mul_(scale)
    return norm, True
