"""Two-server validated aggregation on the coordinator (docs/secure-aggregation.md): the coordinator is the leader,
a helper run by someone else (server/helper) the second server. Each client's input is secret-shared between them
with a proof that it is in range (common/validated_sum); the two check each client on its own, name and leave out
the ones that fail, and add up the rest under public weights. Settings here, free of torch, for the flag checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ValidatedSettings:
    helper: str  # HOST:PORT of the helper
    ca_cert: Path | None  # the CA that signed the helper's certificate (None: no TLS, a test on one machine)
    token: str | None  # the leader token the helper expects (its --leader-token)
    bits: int  # fixed-point bits per value
    clip: float  # the L2 bound a valid input stands for: the most it can be (--max-update-norm)
    quantile: float = 0.5  # > 0: the bound follows this quantile of the clients' norms, from the count that clipped (0: fixed)
