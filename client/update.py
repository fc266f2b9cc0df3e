"""The update a client sends: what changed, computed straight into whatever buffer its codec asks for."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedtl.common.codecs import UpdateSource


def update_source(state: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                  parameters: frozenset[str] | None = None) -> UpdateSource:
    """Gradients where given (FedSGD), else new minus received values, for every tensor the server sent as trainable.

    Nothing is materialised here: the codec calls `write` per tensor, so with the raw codec the
    subtraction lands directly in the upload buffer (no model-sized temporary)."""
    specs = {n: (t.dtype, tuple(t.shape)) for n, t in received.items()}

    def write(name: str, out: torch.Tensor) -> None:
        if name in grads:
            out.copy_(grads[name])
        elif state[name].device.type == "cpu":
            torch.sub(state[name].detach(), received[name], out=out)
        else:
            out.copy_(state[name].detach() - received[name].to(state[name].device))

    exact = frozenset() if parameters is None else frozenset(n for n, t in received.items() if t.is_floating_point() and n not in parameters)
    return UpdateSource(specs, write, exact)  # buffers (BatchNorm statistics) go as they are in every lossy codec


def flat_update(source: UpdateSource) -> np.ndarray:
    """The floating-point tensors of an update, sorted by name, as one float64 vector (what secure aggregation masks;
    the coordinator unflattens in the same order)."""
    names = sorted(n for n, (dtype, _) in source.specs.items() if dtype.is_floating_point)
    out = np.empty(sum(math.prod(source.specs[n][1]) for n in names), dtype=np.float64)
    offset = 0
    for name in names:
        dtype, shape = source.specs[name]
        tensor = torch.empty(shape, dtype=dtype)
        source.write(name, tensor)
        out[offset : offset + tensor.numel()] = tensor.reshape(-1).to(torch.float64).numpy()
        offset += tensor.numel()
    return out


SIGNED = {np.dtype(np.uint16): (np.int16, torch.int16), np.dtype(np.uint32): (np.int32, torch.int32),
          np.dtype(np.uint64): (np.int64, torch.int64)}


def words_source(name: str, values: np.ndarray) -> UpdateSource:
    """A uint16/32/64 vector as an update of one int16/32/64 tensor (its bits unchanged: tensors have no unsigned words)."""
    signed, dtype = SIGNED[values.dtype]

    def write(_: str, out: torch.Tensor) -> None:
        out.copy_(torch.from_numpy(values.view(signed)))

    return UpdateSource({name: (dtype, (values.size,))}, write)
