"""What a client reports with its update: named, typed fields instead of dictionary keys agreed by convention.

Every figure the coordinator reads (the round record's weighted losses and accuracies, the feature-cache counts, a
client's ε) is a field here, with its meaning next to it; the operator's own functions (--train-fn, --evaluate-fn)
add numbers of their own under `custom`. A number they return under a field's name fills that field, so
`{"train_loss": ...}` from your own loop is the round's train loss as the built-in loop's would be.
common/wire.py carries it as the ClientMetrics message (protos/federation.proto: one field each, and a map).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

MAX_CUSTOM = 64  # the operator's own numbers a report may carry


@dataclass
class ClientMetrics:
    # local training
    train_loss: float | None = None
    train_accuracy: float | None = None
    train_seconds: float | None = None
    steps: int | None = None
    # the received model on the client's held-out slice (where the round asks for client evaluation)
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_examples: int | None = None
    # the client's own head (--personal-epochs), fitted on the received backbone
    personal_train_loss: float | None = None
    personal_seconds: float | None = None
    personal_accuracy: float | None = None
    # where the time went
    download_seconds: float | None = None
    feature_cache: bool | None = None  # trained on cached features of the frozen prefix
    cache_build_seconds_train: float | None = None  # the cache was built (not read) this round
    cache_build_seconds_holdout: float | None = None
    # record-level DP-SGD: this client's ledger after the round
    epsilon: float | None = None
    dp_noise: float | None = None
    custom: dict[str, float] = field(default_factory=dict)

    def merge(self, reported: Mapping[str, float]) -> None:
        """Numbers from the operator's function: a field's name fills the field, anything else is custom."""
        for key, value in reported.items():
            if key in _NUMERIC:
                setattr(self, key, _NUMERIC[key](value))
            else:
                self.custom[key] = float(value)

    def as_dict(self) -> dict[str, float]:
        """Every value that is set, fields and custom numbers alike (what --metric-aggregation receives)."""
        out = {name: float(value) for name in _NUMERIC if (value := getattr(self, name)) is not None}
        return {**out, **self.custom}

    def not_finite(self) -> list[str]:
        return [name for name, value in self.as_dict().items() if not math.isfinite(value)]


_NUMERIC = {f.name: (bool if f.type == "bool | None" else int if f.type == "int | None" else float)
            for f in fields(ClientMetrics) if f.name != "custom"}
FIELDS = tuple(_NUMERIC)
