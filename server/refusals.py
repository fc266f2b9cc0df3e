"""The names a refusal goes by: a stable short key for the round log's counts, and which refusals say nothing against
the client that got them."""

from __future__ import annotations

_WIRE_REASONS = {"TruncatedError": "truncated", "DigestMismatch": "digest_mismatch", "OversizeError": "oversize", "CorruptError": "corrupt"}


# Refusals that say nothing against the client: the round's state (a late, duplicate or unexpected update), or a
# transfer that broke off (a client killed mid-upload sends again once restarted). Any other refusal puts the
# client out of the round (see Phase.refused), which then need not wait for it.
STATE_REASONS = frozenset({"stale_round", "wrong_base", "round_closed", "not_selected", "duplicate", "wrong_phase",
                           "refused_earlier", "no_task", "truncated"})


def reason_of(exc: Exception) -> str:
    """Stable short key for the round log's count of refused requests."""
    return getattr(exc, "reason", None) or _WIRE_REASONS.get(type(exc).__name__, type(exc).__name__)
