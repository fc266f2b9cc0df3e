"""Client-level DP-FedAvg's settings (server/strategies/client_dp.py), kept free of torch so flags load fast."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientDPSettings:
    clip: float  # C: fixed, or the adaptive clip's starting value
    noise: float = 0.0  # z (noise std / C on the sum); 0: calibrated to target_epsilon at round 1
    target_epsilon: float = 0.0
    max_epsilon: float = 0.0  # 0: no stop
    delta: float = 1e-5
    accountant: str = "rdp"
    rounds: int = 1  # what target_epsilon is spread over
    quantile: float = 0.0  # γ > 0: adaptive clipping
    clip_lr: float = 0.2  # η
    count_noise: float = 0.0  # σ_b; 0: the round's clients / 20
    weighting: str = "uniform"  # uniform | examples
