"""BatchNorm running statistics pooled over every client's data (`--batchnorm pool`, the run's last round). Pure torch.

FedAvg averages each client's running statistics, which are exponential averages of its last few training batches'
statistics: under label skew each describes one client's classes, and the average drops the variance between clients.
Instead, each client passes its shard through the aggregated model (evaluation mode, no augmentation) and sends, for
every BatchNorm layer it trains, the per-channel means of the layer's input and of its square over its examples (each
image's pixels weighted equally); the coordinator's example-weighted mean of those is the same two moments over the
union of the clients' data, and running_mean = E[x], running_var = E[x²] − E[x]². For the first BatchNorm layer this
is exactly the centralised statistic; deeper layers see inputs normalised by the earlier layers' previous statistics
(one pass, not one per layer).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedtl.common.inputs import Inputs
from fedtl.common.network import Network, eval_mode

PREFIX = "batchnorm_statistics."
BATCH = 128  # images a batch: the upstream layers normalise by its statistics


def layers(net: Network, start: int) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of stages[start:] that keep running statistics, by module name."""
    inside = {id(m) for _, stage in net.stages[start:] for m in stage.modules()}
    return {name: m for name, m in net.module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m) in inside}


def specs(net: Network, start: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, layer in layers(net, start).items():
        out[f"{PREFIX}{name}.mean"] = (torch.float64, (layer.num_features,))
        out[f"{PREFIX}{name}.square"] = (torch.float64, (layer.num_features,))
    return out


@torch.no_grad()
def moments(net: Network, inputs: Inputs, start: int) -> dict[str, torch.Tensor]:
    """This shard's mean (over examples) of each BatchNorm layer's per-channel input mean and mean square."""
    found = layers(net, start)
    n = len(inputs)
    if n == 0:
        raise ValueError("no examples to compute BatchNorm statistics from")
    sums = {name: [torch.zeros(layer.num_features, dtype=torch.float64), torch.zeros(layer.num_features, dtype=torch.float64)]
            for name, layer in found.items()}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().to(torch.float64)
            dims = tuple(d for d in range(x.dim()) if d != 1)
            per_image = tuple(d for d in dims if d != 0)
            mean = x.mean(per_image) if per_image else x  # (batch, channels): each image's pixels weighted equally
            square = (x * x).mean(per_image) if per_image else x * x
            sums[name][0] += mean.sum(0).cpu()
            sums[name][1] += square.sum(0).cpu()
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in found.items()]
    kept = {name: {k: v.clone() for k, v in layer.state_dict().items()} for name, layer in found.items()}
    try:
        with eval_mode(net):  # dropout and the frozen prefix off; the collected layers normalise by their batch, as in training
            for layer in found.values():
                layer.train()
            for idx in _batches(n):
                net.forward(inputs.batch(idx), inputs.start_stage)
    finally:
        for handle in handles:
            handle.remove()
        for name, layer in found.items():  # a forward in train mode moved the running statistics: put them back
            layer.load_state_dict(kept[name])
    out = {}
    for name, (total, squares) in sums.items():
        out[f"{PREFIX}{name}.mean"] = total / n
        out[f"{PREFIX}{name}.square"] = squares / n
    return out


def _batches(n: int) -> list[torch.Tensor]:
    """Batches of BATCH images; a last one of a single image joins the one before (train-mode BatchNorm needs two values)."""
    parts = list(torch.arange(n).split(BATCH))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def apply(net: Network, start: int, stats: Mapping[str, torch.Tensor]) -> int:
    """Write the pooled moments into the running statistics; returns the layers written."""
    found = layers(net, start)
    with torch.no_grad():
        for name, layer in found.items():
            mean = stats[f"{PREFIX}{name}.mean"].to(torch.float64)
            variance = (stats[f"{PREFIX}{name}.square"].to(torch.float64) - mean * mean).clamp_min(0.0)
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
            layer.running_var.copy_(variance.to(layer.running_var.dtype))
    return len(found)


def problem(stats: Mapping[str, torch.Tensor], tolerance: float = 1e-6) -> str:
    """Why these moments cannot be an honest client's ("" when they can): a mean square below the squared mean."""
    for name, mean in stats.items():
        if name.endswith(".mean"):
            square = stats[name[: -len(".mean")] + ".square"]
            if bool((square < mean * mean - tolerance * (1 + square.abs())).any()):
                return f"{name[len(PREFIX):-len('.mean')]}: a mean square below the squared mean"
    return ""
