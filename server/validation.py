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


def check_tensors(expect: Expectation, tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Names, dtypes and shapes exactly as expected, and every value finite. Returns each float tensor's L2 norm.

    One pass per tensor: a float32 L2 norm is finite only if every element is, so it proves
    finiteness at ~6 GB/s; only when it is not finite (a NaN/Inf, or finite values whose squares
    overflow) does the exact element-wise check run, then a float64 norm.
    """
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
    norms: dict[str, float] = {}
    bad = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        values = tensor.float() if tensor.element_size() == 1 else tensor  # float8 has no norm kernel
        norm = float(torch.linalg.vector_norm(values))
        if not math.isfinite(norm):
            if tensorcodec.non_finite({name: tensor}):
                bad.append(name)
                continue
            norm = float(torch.linalg.vector_norm(values, dtype=torch.float64))
        norms[name] = norm
    if bad:
        raise UpdateRejected("non_finite", f"tensors {bad[:5]} hold NaN or Inf")
    return norms


def update_norm(tensors: Mapping[str, torch.Tensor], parameters: frozenset[str], norms: Mapping[str, float] | None = None) -> float:
    """L2 norm over the parameter tensors of an update (buffers excluded)."""
    total = 0.0
    for name in parameters:
        if norms is not None and name in norms:
            total += norms[name] ** 2
        elif tensors[name].numel():
            total += float(torch.linalg.vector_norm(tensors[name], dtype=torch.float64)) ** 2
    return math.sqrt(total)


def clip_to_norm(tensors: Mapping[str, torch.Tensor], parameters: frozenset[str], max_norm: float,
                 norms: Mapping[str, float] | None = None) -> tuple[float, bool]:
    """Scale parameter tensors in place so their joint L2 norm is at most max_norm; return (norm before, clipped).
    With max_norm 0 (no bound) nothing is computed."""
    if max_norm <= 0:
        return math.nan, False
    norm = update_norm(tensors, parameters, norms)
    if norm <= max_norm:
        return norm, False
    scale = max_norm / norm
    for name in parameters:
        tensors[name].mul_(scale)
    return norm, True
