"""Differential privacy (docs/privacy.md): the accountant and its ledgers (accountant.py), record-level DP-SGD on a
client (dpsgd.py). Client-level DP-FedAvg, which runs on the coordinator, is server/privacy.py."""
