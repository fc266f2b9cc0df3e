"""Evaluate a network on labelled inputs; return metrics, never print."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedtl.common.batches import batches, inference_batch_size
from fedtl.common.inputs import ImageInputs, Inputs
from fedtl.common.models import Network, eval_mode
from fedtl.common.progress import track


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    examples: int


@torch.no_grad()
def evaluate(net: Network, inputs: Inputs, batch_size: int = 0) -> EvalResult:
    """Loss and accuracy; batch_size 0 picks one for the input size (cached features: large batches)."""
    if not batch_size:
        batch_size = inference_batch_size(inputs.transform.image_size) if isinstance(inputs, ImageInputs) else 1024
    if len(inputs) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    loss_sum, correct = 0.0, 0
    with eval_mode(net):
        for idx in track(batches(len(inputs), batch_size, shuffle=False), "evaluation", -(-len(inputs) // batch_size), " batches"):
            logits = net.forward(inputs.batch(idx), start=inputs.start_stage)
            labels = inputs.labels[idx.to(inputs.labels.device)]
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
    return EvalResult(loss_sum / len(inputs), correct / len(inputs), len(inputs))
