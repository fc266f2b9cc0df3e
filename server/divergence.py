"""Notice a diverging run: a global model whose test loss is no longer finite, or has grown past twice the
initial model's (or, when there was no initial evaluation, twice the best seen). A learning run stays far
below that; an adaptive server optimizer with too large a learning rate does not (30.6 -> 344 -> 649)."""

from __future__ import annotations

import math

FACTOR = 2.0


class LossWatch:
    def __init__(self) -> None:
        self.initial: float | None = None
        self.best = math.inf

    def observe(self, round_number: int, loss: float) -> float | None:
        """Record this round's test loss; return the reference it exceeds when the run looks diverging."""
        if round_number == 0:
            self.initial = loss
        reference = self.initial if self.initial is not None and math.isfinite(self.initial) else self.best
        diverging = round_number > 0 and (not math.isfinite(loss) or (math.isfinite(reference) and loss > FACTOR * reference))
        if math.isfinite(loss):
            self.best = min(self.best, loss)
        return reference if diverging else None

    def state(self) -> dict:
        return {"initial": self.initial, "best": None if math.isinf(self.best) else self.best}

    def restore(self, values: dict) -> None:
        self.initial = values.get("initial")
        best = values.get("best")
        self.best = math.inf if best is None else float(best)
