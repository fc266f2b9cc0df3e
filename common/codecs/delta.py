"""Model versions as steps from the previous one (`--download-codec delta`): shared by the coordinator, which
makes each version, and clients, which rebuild it and check its digest."""

from __future__ import annotations

from collections.abc import Callable

import torch

DELTA_SEGMENT = "trainable-delta"


def steps_writer(live: dict[str, torch.Tensor], previous: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], None]:
    """An UpdateSource writer of live - previous (float tensors) or the new value (integer buffers)."""
    def write(name: str, out: torch.Tensor) -> None:
        if live[name].is_floating_point():
            torch.sub(live[name].detach().cpu(), previous[name], out=out)
        else:
            out.copy_(live[name])
    return write


def apply_steps(base: dict[str, torch.Tensor], steps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The next version from the one held and the decoded steps: float tensors add (in float32 on the CPU, the same
    bits on every machine, so the sum's digest can be checked), integer buffers (counters) arrive as their new value."""
    return {n: (torch.add(base[n], steps[n]) if base[n].is_floating_point() else steps[n].clone()) for n in base}
