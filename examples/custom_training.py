"""Your own local training and evaluation, and your own summary of what clients report.

    python -m server ... --train-fn examples.custom_training:train --evaluate-fn examples.custom_training:evaluate \
        --metric-aggregation examples.custom_training:worst_client --client-eval-every 1
    python -m client ... --allow-plugin examples.custom_training
"""

import torch
import torch.nn.functional as F

from fedtl.api import LocalData, TrainConfig


def train(model: torch.nn.Module, data: LocalData, config: TrainConfig) -> dict[str, float]:
    """Adam with label smoothing instead of the built-in SGD; the update sent is what this changed."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    total, seen = 0.0, 0
    for _ in range(config.local_epochs):
        for x, y in data.batches():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
    return {"train_loss": total / max(seen, 1)}


def evaluate(model: torch.nn.Module, data: LocalData) -> dict[str, float]:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.batches(shuffle=False))
    return {"eval_accuracy": correct / max(len(data), 1)}


def worst_client(reports: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The least served client's held-out accuracy: what a mean over clients hides."""
    accuracies = [metrics["eval_accuracy"] for _, metrics in reports if "eval_accuracy" in metrics]
    return {"worst_eval_accuracy": min(accuracies), "clients_evaluated": len(accuracies)} if accuracies else {}
