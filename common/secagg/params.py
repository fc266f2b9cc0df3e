"""Which secure-aggregation parameters are safe, for the server's flags, each round's set-up, and each client's check
of the set-up it is sent (a client refuses to take part in a round whose parameters would not protect it)."""

from __future__ import annotations

from fedtl.common.secagg.fixedpoint import MAX_BITS, MAX_MODULUS_BITS, capacity_bits

MIN_PARTICIPANTS = 3  # with two, each learns the other's update from the sum


def default_threshold(degree: int) -> int:
    """More than 2/3 of the k + 1 share holders (a client's neighbours and itself), at most k: safe (more than half)
    with room for some to drop out, and a margin against clients colluding with the coordinator."""
    return min(degree, 2 * (degree + 1) // 3 + 1)


def problem(participants: int, degree: int, threshold: int, bits: int, max_weight: int) -> str:
    """Why these parameters are unsafe or cannot work ("" when they are fine). `degree` is the graph's actual degree."""
    if participants < MIN_PARTICIPANTS:
        return (f"secure aggregation needs at least {MIN_PARTICIPANTS} clients in a round, got {participants} "
                "(with two, each could subtract its own update from the sum)")
    if threshold > degree:
        return (f"threshold {threshold} is more than the {degree} neighbours that hold each client's shares: no secret could be "
                "rebuilt; lower --secagg-threshold or raise --secagg-neighbours")
    if 2 * threshold <= degree + 1:
        return (f"threshold {threshold} is not more than half of the {degree + 1} holders of a client's shares (its {degree} "
                "neighbours and itself): a coordinator could collect its mask-key shares and its self-mask shares from two "
                f"halves of them and unmask its update; use more than {(degree + 1) // 2} (default {default_threshold(degree)})")
    if not 1 <= bits <= MAX_BITS:
        return f"--secagg-bits must be in 1..{MAX_BITS}, got {bits}"
    if max_weight < 1:
        return f"--secagg-max-weight must be at least 1, got {max_weight}"
    need = capacity_bits(participants, max_weight, bits)
    if need > MAX_MODULUS_BITS:
        return (f"{participants} clients x weight {max_weight} x {bits}-bit values need {need} bits, more than the {MAX_MODULUS_BITS}-bit "
                "modulus holds: lower --secagg-bits or --secagg-max-weight")
    return ""
