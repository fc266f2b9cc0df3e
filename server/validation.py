"""Check an update against what the round expects, before anything reaches the aggregate. Pure functions.

Two steps: the header alone (round, base model, kind, example count, encoding and the size that
encoding allows) before any data is received, and the decoded tensors (names, dtypes, shapes,
finite values) once it has arrived. Size limits come from the update's codec; everything after
decoding is codec-independent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from fedtl.common import codecs, tensorcodec
from fedtl.common.config import UpdateHeader, UpdateKind
from fedtl.common.errors import UpdateRejected


@dataclass(frozen=True)
class Expectation:
    """What every update of one round must look like."""

    round: int
    base_digest: str
    kind: UpdateKind
    specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
    parameters: frozenset[str]  # which names are parameters (the rest are buffers)
    max_examples: int = 1 << 40
    encodings: frozenset[str] = frozenset({codecs.DEFAULT})
    positive: Mapping[str, torch.Tensor] = field(default_factory=dict)  # buffers that must stay >= 0 (BatchNorm variances): base values

    def size_bounds(self, encoding: str) -> tuple[int, int]:
        return codecs.get(encoding).size_bounds(self.specs)

    @property
    def max_blob_bytes(self) -> int:
        return max(self.size_bounds(e)[1] for e in self.encodings)


@dataclass
class Update:
    """A checked update's tensors, with the L2 norms validation measured (so wrappers need not measure again)."""

    tensors: dict[str, torch.Tensor]
    norms: dict[str, float] = field(default_factory=dict)
    # Sparse-coded tensors (top-k): the flat indices sent; every other entry is zero. Scaling keeps it true;
    # anything that writes other entries must drop the name from here.
    support: dict[str, torch.Tensor] = field(default_factory=dict)

    def norm(self, names: Iterable[str]) -> float:
        """Joint L2 norm of the named float tensors."""
        total = 0.0
        for name in names:
            if name not in self.norms:
                tensor = self.tensors[name]
                if not tensor.is_floating_point() or not tensor.numel():
                    continue
                values = tensor.float() if tensor.element_size() == 1 else tensor  # float8 has no norm kernel
                self.norms[name] = float(torch.linalg.vector_norm(values, dtype=torch.float64))
            total += self.norms[name] ** 2
        return math.sqrt(total)

    def forget_norms(self, names: Iterable[str]) -> None:
        """The named tensors changed in place; measure them again when asked."""
        for name in names:
            self.norms.pop(name, None)


def check_header(expect: Expectation, header: UpdateHeader) -> None:
    """Refuse by header alone (no data received yet): wrong round, base, kind, count, encoding or size."""
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
    if header.encoding not in expect.encodings:
        raise UpdateRejected("wrong_encoding", f"update encoding {header.encoding!r}; this round takes {', '.join(sorted(expect.encodings))}")
    least, most = expect.size_bounds(header.encoding)
    if header.total_bytes > most:
        raise UpdateRejected("oversize", f"update announces {header.total_bytes} bytes; a {header.encoding} update of this model is at most {most}")
    if header.total_bytes < least:
        raise UpdateRejected("undersize", f"update announces {header.total_bytes} bytes; a {header.encoding} update of this model takes at least {least}")
    bad = header.metrics.not_finite()
    if bad:
        raise UpdateRejected("bad_metrics", f"metrics {bad} are not finite")


def check_tensors(expect: Expectation, tensors: Mapping[str, torch.Tensor]) -> Update:
    """Names, dtypes and shapes exactly as expected, and every value finite. Returns the update with each float
    tensor's L2 norm.

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
    for name, base in expect.positive.items():  # a negative variance breaks every later forward pass (BatchNorm's eps covers 0)
        if not bool(((base + tensors[name].to(base.dtype)) >= 0).all()):
            raise UpdateRejected("invalid_buffer", f"tensor {name} would make a BatchNorm variance negative")
    return Update(dict(tensors), norms)
