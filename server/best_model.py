"""The best model by the coordinator's validation slice (images of its test split it never reports on): after each
evaluated round the global model is scored on them, and the best so far is kept as RUN_DIR/best_model.safetensors.

Picking the best round by the reported test accuracy would make that accuracy an optimistic estimate; a held-back
slice keeps the test figure honest. The best round and its score are checkpointed, so a resumed run keeps comparing
against them; a new best is written beside the checkpoint as best_model.safetensors.pending and becomes
best_model.safetensors once that round's checkpoint is on disk, so the file never holds a round a resume would drop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedtl.common import checkpoint
from fedtl.common.errors import FedError
from fedtl.server.evaluation import ServerEvaluator
from fedtl.server.state import StateRegistry

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model.safetensors"


@dataclass(frozen=True)
class Validation:
    accuracy: float
    loss: float
    best_round: int  # the round whose model is in best_model.safetensors (this one, when it is the best so far)
    seconds: float


class BestModel:
    def __init__(self, validator: ServerEvaluator, path: Path, blob: Callable[[int], bytearray], state: StateRegistry) -> None:
        self.validator, self.path, self.blob = validator, path, blob
        self.pending = path.with_name(path.name + ".pending")
        self.round, self.accuracy = 0, -1.0
        state.register("best_model", lambda: ({}, {"round": self.round, "accuracy": self.accuracy}), self._restore)

    def _restore(self, _: dict, values: dict) -> None:
        self.round, self.accuracy = int(values.get("round", 0)), float(values.get("accuracy", -1.0))
        if self.pending.exists():  # written, and the process ended before or after its round's checkpoint landed
            if _round_of(self.pending) == self.round:
                self.pending.replace(self.path)
            else:
                self.pending.unlink()

    def landed(self, number: int) -> None:
        """Round `number`'s checkpoint is on disk: a best model written in it (or before) is the best model now."""
        if self.pending.exists() and (_round_of(self.pending) or 0) <= number:
            self.pending.replace(self.path)

    def consider(self, number: int) -> Validation:
        """Score round `number`'s model; keep it when it beats every earlier round (ties keep the earlier one)."""
        ev = self.validator.run()
        accuracy = ev.result.accuracy
        if accuracy > self.accuracy:
            checkpoint.write_bytes_atomic(self.pending, self.blob(number))
            self.round, self.accuracy = number, accuracy
            logger.debug("round %d: best so far on the validation slice (%.2f%%): %s", number, 100 * accuracy, self.path)
        return Validation(accuracy, ev.result.loss, self.round, ev.seconds)


def _round_of(path: Path) -> int | None:
    try:
        return int(checkpoint.load_tensors(path).metadata["round"])
    except (OSError, KeyError, ValueError, FedError):
        return None
