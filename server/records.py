"""The round record: every figure of a completed round, as values in fields, and its one-line rendering."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class RoundRecord:
    round: int  # 0: the initial model's evaluation
    rounds: int
    selected: int = 0
    answered: int = 0
    examples: int = 0
    train_loss: float = math.nan
    train_accuracy: float = math.nan
    test_loss: float = math.nan
    test_accuracy: float = math.nan
    client_eval_accuracy: float = math.nan  # federated evaluation: the global model clients received, on their held-out slices
    client_personal_accuracy: float = math.nan
    client_eval_worst_decile: float = math.nan  # the mean held-out accuracy of the worst 10 % of answering clients (global model)
    client_personal_worst_decile: float = math.nan  # the same for their personal heads
    bytes_down: int = 0
    bytes_up: int = 0
    upload_codec: str = "raw"  # how the updates were encoded (common/codecs): bytes_up is what that codec moved
    download_codec: str = "raw"  # how the global model went down (server/publishing.py): bytes_down is what it moved
    seconds: float = 0.0  # round duration: selection to checkpoint
    elapsed: float = 0.0  # since the start of round 1 (time to accuracy)
    eval_seconds: float = 0.0
    eval_cache_used: bool | None = None  # server evaluation on cached features (None: no evaluation)
    eval_cache_build_seconds: float | None = None  # set when the features were built (or read from disk) for it
    clients_cached: int = 0  # answering clients that trained on cached features
    client_cache_build_seconds: float | None = None  # the slowest client cache build this round, if any built
    attempt: int = 1
    close_reason: str = ""  # all_answered | target_reached | clients_gone | straggler_wait (see server/rounds.py)
    rejected: dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    capped: int = 0
    clients: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each part of the round
    secure: bool = False  # secure aggregation: the figures above are sums the coordinator unmasked, no client's own
    applied: bool = True  # False: the aggregate would have made the model's outputs non-finite, so the model stayed as it was
    dropped: str = ""  # why a secure round's sum was not used (failed closed): the model stayed as it was, the run went on
    left_out: dict[str, str] = field(default_factory=dict)  # validated aggregation: clients whose input failed, and why
    epsilon: float = math.nan  # client-level DP: the federation's ε (at --dp-delta) after this round's release
    record_epsilon: float = math.nan  # record-level DP-SGD: the largest ε any answering client reported for its own data
    client_metrics: dict[str, float] = field(default_factory=dict)  # --metric-aggregation over the answering clients' metrics
    validation_accuracy: float = math.nan  # the coordinator's held-back validation slice (--validation-per-class)
    best_round: int = 0  # the round whose model is best_model.safetensors after this round (0: none yet)
    statistics: str = ""  # "ridge", "ncm" (round 1: a closed-form head) or "batchnorm" (BatchNorm pooled): a statistics round

    def to_json(self) -> dict:
        """JSON-ready values: NaN (nothing measured) becomes null."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        if self.round == 0:
            return (f"round 0/{self.rounds} (initial model) | test loss {self.test_loss:.4f} acc {_pct(self.test_accuracy)} | "
                    f"eval {self.eval_seconds:.2f}s | cache {self._eval_cache()}")
        parts = [
            f"round {self.round}/{self.rounds}",
            f"clients {self.answered}/{self.selected}",
            _statistics_line(self.statistics, self.examples) if self.statistics else
            f"train loss {self.train_loss:.4f}" if not math.isnan(self.train_loss) else "train loss not reported",
            f"test loss {self.test_loss:.4f} acc {_pct(self.test_accuracy)}",
        ]
        if not math.isnan(self.validation_accuracy):  # held-back images: they pick best_model.safetensors
            best = "best so far" if self.best_round == self.round else f"best: round {self.best_round}"
            parts.append(f"val acc {_pct(self.validation_accuracy)} ({best})")
        if not math.isnan(self.client_eval_accuracy):
            personal = "" if math.isnan(self.client_personal_accuracy) else f" personal {_pct(self.client_personal_accuracy)}"
            worst = f" (worst 10% of clients {_pct(self.client_eval_worst_decile)}"
            worst += ")" if math.isnan(self.client_personal_worst_decile) else f", personal {_pct(self.client_personal_worst_decile)})"
            # Clients evaluate the model they received, before training on it: the previous round's global model.
            parts.append(f"clients' held-out acc of the round-{self.round - 1} model {_pct(self.client_eval_accuracy)}{personal}{worst}")
        down = "" if self.download_codec == "raw" else f" ({self.download_codec})"
        up = "" if self.upload_codec == "raw" else f" ({self.upload_codec})"
        parts.append(f"down {_mb(self.bytes_down)}{down} up {_mb(self.bytes_up)}{up}")
        parts.append(f"{self.seconds:.2f}s")
        if self.eval_cache_used is not None or self.clients_cached:
            built = f" (built in up to {self.client_cache_build_seconds:.2f}s)" if self.client_cache_build_seconds is not None else ""
            parts.append(f"cache eval {self._eval_cache()}, clients {self.clients_cached}/{self.answered}{built}")
        if self.rejected:
            parts.append("rejected " + ",".join(f"{k}={v}" for k, v in sorted(self.rejected.items())))
        if self.clipped:
            parts.append(f"clipped {self.clipped}")
        if self.capped:
            parts.append(f"capped {self.capped}")
        if self.secure:
            parts.append("secure aggregation")
        if not math.isnan(self.epsilon):
            parts.append(f"client-level ε {self.epsilon:.3f}")
        if not math.isnan(self.record_epsilon):
            parts.append(f"record-level ε ≤ {self.record_epsilon:.3f}")
        if self.attempt > 1:
            parts.append(f"attempt {self.attempt}")
        if self.client_metrics:
            parts.append(" ".join(f"{k} {v:.4g}" for k, v in list(self.client_metrics.items())[:6]))
        if self.left_out:
            parts.append("left out " + ", ".join(f"{name} ({why})" for name, why in list(self.left_out.items())[:4]))
        if self.dropped:
            parts.append(f"DROPPED: {self.dropped}")
        elif not self.applied:
            parts.append("NOT APPLIED: the aggregate made the model's outputs non-finite")
        return " | ".join(parts)

    def _eval_cache(self) -> str:
        if self.eval_cache_used is None:
            return "n/a"
        if not self.eval_cache_used:
            return "off"
        return "on" if self.eval_cache_build_seconds is None else f"on (built in {self.eval_cache_build_seconds:.2f}s)"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _statistics_line(kind: str, examples: int) -> str:
    return f"BatchNorm statistics of {examples} examples" if kind == "batchnorm" else f"{kind} head from {examples} examples' statistics"
