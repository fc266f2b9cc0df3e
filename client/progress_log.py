"""Local training's progress as the site sees it (common/progress.py: a bar on a terminal, a line at most every 10 s elsewhere)."""

from __future__ import annotations

from fedtl.common import faults
from fedtl.common.progress import Progress


class ProgressLog:
    """Local training's progress (common/progress.py: a bar on a terminal, a line at most every 10 s elsewhere)."""

    def __init__(self, round_number: int, epochs: int) -> None:
        self.round, self.epochs = round_number, epochs
        self.progress: Progress | None = None

    def __call__(self, epoch: int, batch: int, per_epoch: int, loss: float) -> None:
        faults.hit("train")
        if self.progress is None:
            self.progress = Progress(f"round {self.round}: training", self.epochs * per_epoch, " batches")
        self.progress.update(epoch * per_epoch + batch, f"epoch {epoch + 1}/{self.epochs}, loss {loss:.4f}")
        if batch == per_epoch and epoch + 1 == self.epochs:
            self.progress.close(f"loss {loss:.4f}")
