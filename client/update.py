"""The update a client sends: what changed, computed straight into whatever buffer its codec asks for."""

from __future__ import annotations

from typing import Mapping

import torch

from common.codecs import UpdateSource


def update_source(state: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> UpdateSource:
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

    return UpdateSource(specs, write)
