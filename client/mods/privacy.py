"""The data owner's privacy limits bind whatever the coordinator sends: a task below them is refused before any download.

The budget itself (the ledger of every DP-SGD round this data went through, and --max-epsilon) is client/privacy.py;
the local round spends it (client/local_round.py). This mod is the gate in front.
"""

from __future__ import annotations

from fedtl.client.mods.base import ClientMod
from fedtl.client.privacy import PrivacyBudget
from fedtl.common.config import TrainTask


class PrivacyBudgetMod(ClientMod):
    def __init__(self, budget: PrivacyBudget) -> None:
        self.budget = budget

    def admit(self, task: TrainTask) -> None:
        self.budget.check_task(task)  # PrivacyRefused: this client never trains on these terms
