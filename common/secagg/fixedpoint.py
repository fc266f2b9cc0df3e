"""A client's contribution as integers that sum modulo 2^64 without overflow, honestly.

A client clips its update to L2 norm `clip` (and counts it: the count is summed too, so the coordinator learns how
many clients were clipped, not which), so every coordinate lies in [-clip, clip]; it maps each to
{0, ..., 2^bits - 1} with stochastic rounding (unbiased) and multiplies by its weight n (1 <= n <= `max_weight`).
Its training loss and accuracy ride along the same way, so the round log keeps their weighted means without any
client's own figure leaving its machine. Under record-level DP-SGD the ε a client has spent rides along as a
thermometer over EPSILON_EDGES (word k is 1 when ε > EPSILON_EDGES[k], unweighted): the sum counts the clients above
each edge, so the coordinator learns how many clients' ε fall in each 5 %-wide bin, not whose, and reports the upper
edge of the highest as "ε ≤". Layout of the vector:

    n*q(update) (D words) | n*q(train_loss / LOSS_RANGE) | n*q(train_accuracy) | ε thermometer (238 words) | clipped (0 or 1) | n

No sum of N such vectors exceeds N * max_weight * (2^bits - 1): `capacity_bits` says how many bits that takes, and
the round sums modulo 2^16 when it fits (8-bit values of uniformly weighted clients: `--upload-codec int8`, half the
bytes of a float32 update), else 2^32 (as many bytes as float32), else 2^64; more is refused before a round starts. Under distributed DP (common/secagg/noise.py) every weight is 1,
each client adds Skellam noise to the update's words and leaves the metric and clipped words at zero (they would
leak un-noised figures); the sum is then read as signed, with room for the noise's tails. After unmasking, `decode` checks that the sum could have come from N valid vectors (a corrupted or
out-of-range input almost surely breaks that) and turns it into the weighted mean update and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedtl.common.secagg import noise as skellam

MAX_MODULUS_BITS = 64
MAX_BITS = 48  # fixed-point bits a value may take: values and their stochastic rounding stay exact in float64 (53 bits)
WORDS = {16: np.uint16, 32: np.uint32, 64: np.uint64}  # modulus bits -> the unsigned type whose arithmetic wraps at it
STATS = ("train_loss", "train_accuracy")  # weighted means the coordinator learns
STAT_RANGE = {"train_loss": 16.0, "train_accuracy": 1.0}  # values are clipped into [0, range]
EPSILON_EDGES = np.array([0.0, *(0.01 * 1.05**k for k in range(237))])  # 0, then 0.01 to 1,000 in steps of 5 %
EXTRA = len(STATS) + len(EPSILON_EDGES) + 2  # stats, the ε thermometer, the clipped count, the weight
CHUNK = 1 << 16  # values encoded at a time


def length(coordinates: int) -> int:
    return coordinates + EXTRA


def capacity_bits(clients: int, max_weight: int, bits: int, noise_std: float = 0.0) -> int:
    """Bits the largest possible sum needs (at most 64); with noise of `noise_std` on the sum, a sign bit and its tails too."""
    largest = max(1, clients) * max(1, max_weight) * (2**bits - 1)
    if noise_std <= 0:
        return math.ceil(math.log2(largest + 1))
    return math.ceil(math.log2(largest + 2 * _tail(noise_std) + 1)) + 1


def widest_bits(clients: int, max_weight: int) -> int:
    """The most fixed-point bits (up to MAX_BITS) whose sum over `clients` of weight up to `max_weight` fits the widest
    modulus: a statistics round's precision (server/statistics_rounds.py), where range, not bytes, is what counts."""
    return max(b for b in range(1, MAX_BITS + 1) if b == 1 or capacity_bits(clients, max_weight, b) <= MAX_MODULUS_BITS)


def modulus_bits(clients: int, max_weight: int, bits: int, noise_std: float = 0.0) -> int:
    """The smallest word (16, 32 or 64 bits) the sum of `clients` inputs cannot overflow."""
    need = capacity_bits(clients, max_weight, bits, noise_std)
    return next(word for word in WORDS if need <= word) if need <= MAX_MODULUS_BITS else MAX_MODULUS_BITS


def _tail(noise_std: float) -> float:
    return skellam.TAIL * noise_std + skellam.TAIL


def encode(update: np.ndarray, weight: int, clip: float, bits: int, rng: np.random.Generator,
           stats: Mapping[str, float], word_bits: int = 64, out: np.ndarray | None = None,
           noise_variance: float = 0.0) -> tuple[np.ndarray, bool]:
    """(the vector in `word_bits`-bit words, whether the update was clipped). `update` is the flat float64 update;
    `out`, when it fits, is reused (a client keeps one from round to round: no fresh model-sized pages each time).
    `noise_variance` > 0: this client's share of the distributed noise (weight 1, metrics left out)."""
    levels = 2**bits - 1
    if noise_variance and weight != 1:
        raise ValueError("distributed noise is calibrated to updates of weight 1")
    if not 1 <= weight or not clip > 0 or not 1 <= bits <= MAX_BITS or weight * levels >= 2**word_bits:
        raise ValueError(f"weight {weight}, clip {clip} and bits {bits} must be positive, bits at most {MAX_BITS}, and fit "
                         f"{word_bits}-bit words")
    norm = float(np.linalg.norm(update))
    if not math.isfinite(norm):
        raise ValueError("the update is not finite")
    clipped = norm > clip
    # (u * shrink + clip) / (2 clip) * levels, with shrink = clip / norm when clipped: one multiply-add per value
    scale = levels / (2 * clip) * (clip / norm if clipped else 1.0)
    word = WORDS[word_bits]
    if out is None or out.dtype != word or out.size != length(update.size):
        out = np.empty(length(update.size), dtype=word)
    values, noise = np.empty(min(CHUNK, update.size)), np.empty(min(CHUNK, update.size))
    for start in range(0, update.size, CHUNK):  # in cache-sized pieces, into reused buffers: no model-sized temporaries
        n = min(CHUNK, update.size - start)
        piece = np.multiply(update[start : start + n], scale, out=values[:n])
        piece += levels / 2
        np.clip(piece, 0.0, levels, out=piece)
        piece += rng.random(out=noise[:n])  # floor(x + U[0, 1)) is stochastic rounding: E = x
        np.floor(piece, out=piece)  # at most `levels`: x <= levels and U < 1
        out[start : start + n] = piece
    out[: update.size] *= word(weight)  # no overflow: weight * levels fits the word (checked above)
    if noise_variance:
        for start in range(0, update.size, CHUNK):  # negative noise wraps modulo 2^word_bits: the sum is read as signed
            n = min(CHUNK, update.size - start)
            out[start : start + n] += skellam.skellam(noise_variance, n).astype(word)
        out[update.size:] = 0
        out[-1] = word(1)
        return out, clipped
    for i, key in enumerate(STATS):
        value = min(max(float(stats.get(key, 0.0)), 0.0), STAT_RANGE[key])
        out[update.size + i] = _round(np.array([value / STAT_RANGE[key] * levels]), rng)[0] * weight
    thermometer = out[update.size + len(STATS) : -2]
    thermometer[:] = 0
    epsilon = float(stats.get("epsilon", 0.0))
    if epsilon > 0:  # NaN is not: no ε to report
        thermometer[: int(np.searchsorted(EPSILON_EDGES, epsilon, side="left"))] = 1
    out[-2] = word(clipped)
    out[-1] = word(weight)
    return out, clipped


@dataclass(frozen=True)
class Decoded:
    update: np.ndarray  # the weighted mean update, float64
    weight: int  # the sum of the weights
    stats: dict[str, float]  # weighted means of STATS
    clipped: int  # how many clients clipped
    record_epsilon: float = math.nan  # an upper bound on the largest record-level ε among the clients (nan: none reported)


def decode(total: np.ndarray, count: int, clip: float, bits: int, max_weight: int, noise_std: float = 0.0) -> Decoded:
    """The weighted means from the unmasked sum of `count` vectors (with noise of `noise_std` in it: distributed DP).
    Raises ValueError when no `count` valid vectors sum to it (an input was corrupted or out of range, or masks did not
    cancel)."""
    levels = 2**bits - 1
    if noise_std > 0:
        return _decode_noised(total, count, clip, levels, noise_std)
    total = total.astype(np.uint64, copy=False)
    weight, clipped = int(total[-1]), int(total[-2])
    if not count <= weight <= count * max_weight:
        raise ValueError(f"the summed weight {weight} cannot come from {count} clients of weight 1..{max_weight}")
    if clipped > count:
        raise ValueError(f"{clipped} clipped updates among {count}")
    if int(total[:-2].max(initial=0)) > weight * levels:
        raise ValueError("a coordinate exceeds what valid inputs of this weight can sum to")
    scale = 1.0 / weight / levels
    update = total[:-EXTRA].astype(np.float64) * (scale * 2 * clip) - clip
    stats = {key: float(total[-EXTRA + i]) * scale * STAT_RANGE[key] for i, key in enumerate(STATS)}
    return Decoded(update, weight, stats, clipped, _largest_epsilon(total[-EXTRA + len(STATS) : -2].astype(np.int64), count))


def _largest_epsilon(above: np.ndarray, count: int) -> float:
    """The upper edge of the highest bin holding a client's ε, from how many clients are above each edge."""
    if int(above.max(initial=0)) > count or bool(np.any(np.diff(above) > 0)):
        raise ValueError(f"the ε counts cannot come from {count} clients (more than {count}, or rising with ε)")
    reached = np.flatnonzero(above)
    if not reached.size:
        return math.nan
    top = int(reached[-1])
    return float(EPSILON_EDGES[top + 1]) if top + 1 < EPSILON_EDGES.size else math.inf


def _decode_noised(total: np.ndarray, count: int, clip: float, levels: int, noise_std: float) -> Decoded:
    signed = total.view(f"int{8 * total.itemsize}").astype(np.int64)  # negative noise wrapped
    if int(signed[-1]) != count or signed[-EXTRA:-1].any():
        raise ValueError(f"the summed weight {int(signed[-1])} is not the {count} noised inputs' (or a metric word is not zero)")
    body, tail = signed[:-EXTRA], _tail(noise_std)
    if body.size and (float(body.min()) < -tail or float(body.max()) > count * levels + tail):
        raise ValueError("a coordinate lies beyond what valid inputs and the round's noise can sum to")
    update = body.astype(np.float64) * (2 * clip / count / levels) - clip
    return Decoded(update, count, {}, 0)


def _round(scaled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding to integers: E[result] = scaled."""
    return np.floor(scaled + rng.random(scaled.shape)).astype(np.uint64)
