"""What a validated round tells its clients (TrainTask.validated): the input's shape, the clip it stands for, and the
coordinator's helper (a client sends its share only to the helper its own operator names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidatedSetup:
    coordinates: int
    bits: int
    bound: int
    clip: float
    helper: str  # HOST:PORT
