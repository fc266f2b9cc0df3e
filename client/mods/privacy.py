"""The data owner's privacy limits bind whatever the coordinator sends: a task below them is refused before any download.

The budget itself (the ledger of every DP-SGD round this data went through, and --max-epsilon) is client/privacy.py;
the local round spends it (client/local_round.py). This mod is the gate in front.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedtl.client.mods.base import ClientMod
from fedtl.common.config import TrainTask
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section

if TYPE_CHECKING:
    from fedtl.client.privacy import PrivacyBudget


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--max-epsilon", type=float, default=0.0, help="this data owner's limit: train only under record-level DP-SGD, "
                   "and never past this ε over all runs (the ledger is in --workdir); 0: no limit of its own")
    g.add_argument("--min-client-dp-noise", type=float, default=0.0, help="this data owner's floor under client-level DP: send "
                   "updates only masked (--secure-aggregation), with distributed noise of at least this multiplier; 0: none")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="this data owner's δ: --max-epsilon is checked at it, whatever "
                   "the coordinator's --dp-delta, and a coordinator asking a larger δ (a weaker guarantee) is refused")


SECTION = Section("privacy", "privacy (docs/privacy.md)", add_flags)


def limits(a: argparse.Namespace) -> tuple[float, float, float]:
    """(--max-epsilon, --min-client-dp-noise, --dp-delta), checked."""
    if not a.max_epsilon >= 0 or not a.min_client_dp_noise >= 0:
        raise ConfigError("--max-epsilon and --min-client-dp-noise must be >= 0")
    if not 0 < a.dp_delta < 1:
        raise ConfigError(f"--dp-delta must be in (0, 1), got {a.dp_delta:g}")
    return float(a.max_epsilon), float(a.min_client_dp_noise), float(a.dp_delta)


class PrivacyBudgetMod(ClientMod):
    def __init__(self, budget: PrivacyBudget) -> None:
        self.budget = budget

    def admit(self, task: TrainTask) -> None:
        self.budget.check_task(task)  # PrivacyRefused: this client never trains on these terms
