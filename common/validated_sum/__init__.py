"""Two-server validated aggregation: inputs secret-shared with a proof of range, checked per client (proof.py)."""
