"""The update codec seam: how an update's tensors become upload bytes and back.

The client computes its update through an `UpdateSource` (names with dtypes and shapes, and a
function that writes one tensor into a destination), so computing the update never knows the
encoding, and a codec can write it straight into the upload buffer (raw: no extra copy). The
server decodes before validating, and validation checks the decoded tensors, never wire sizes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

Specs = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]  # name -> (dtype, shape), in the model's order


@dataclass(frozen=True)
class UpdateSource:
    """An update not yet materialised: `write(name, out)` fills `out` (the spec's dtype and shape)."""

    specs: Specs
    write: Callable[[str, torch.Tensor], None]
    # Float tensors lossy codecs must send as they are: buffers, whose change is a new value, not a step (rounding
    # BatchNorm's running variance can make it negative). Decoders accept any float tensor sent as it is.
    exact: frozenset[str] = frozenset()

    @staticmethod
    def of(tensors: Mapping[str, torch.Tensor], exact: frozenset[str] = frozenset()) -> UpdateSource:
        """An update that already exists as tensors (tests, attack harnesses, simulations)."""
        specs = {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}

        def write(name: str, out: torch.Tensor) -> None:
            out.copy_(tensors[name])

        return UpdateSource(specs, write, exact)


class UpdateCodec(abc.ABC):
    name: str = ""
    error_feedback = False  # biased (top-k): clients carry what was not sent into their next update

    @abc.abstractmethod
    def size_bounds(self, specs: Specs) -> tuple[int, int]:
        """(fewest, most) bytes an encoding of an update with these tensors can take; checked on the header."""

    @abc.abstractmethod
    def encode(self, source: UpdateSource, out: bytearray | None = None) -> bytearray | memoryview:
        """The update's bytes, written into `out` when it is big enough (it is reused round after round)."""

    @abc.abstractmethod
    def decode(self, blob: bytes | bytearray | memoryview, specs: Specs) -> dict[str, torch.Tensor]:
        """Tensors named and typed as the blob says; validation compares them with `specs` afterwards.
        Raises a WireFormatError for bytes that do not follow the codec's format."""

    def decode_update(self, blob: bytes | bytearray | memoryview, specs: Specs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(tensors, support): support maps a sparse-coded tensor to the flat indices it sent (the rest are zero),
        so folding it costs O(k); dense codecs have none."""
        return self.decode(blob, specs), {}
