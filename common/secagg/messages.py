"""What a secure-aggregation round exchanges, as domain records (common/wire_secagg.py converts them to protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The phases of a secure round, in order. The client answers each with a SecAggMessage, except "masked_input", which
# it answers with an upload (a single int64 tensor, "masked"); it may withdraw in any phase.
ADVERTISE, SHARE, MASKED_INPUT, CHECK, UNMASK = "advertise", "share", "masked_input", "check", "unmask"
PHASES = (ADVERTISE, SHARE, MASKED_INPUT, CHECK, UNMASK)


@dataclass(frozen=True)
class SecAggSetup:
    participants: tuple[str, ...]
    threshold: int
    degree: int
    graph_seed: bytes
    bits: int
    clip: float
    max_weight: int
    attempt: int = 1
    modulus_bits: int = 64  # 16, 32 or 64: sums wrap at 2^modulus_bits (fixedpoint.modulus_bits)
    noise: float = 0.0  # distributed DP: the noise multiplier of the sum of all participants' Skellam noise (noise.py)


@dataclass(frozen=True)
class PublicKeys:
    client: str
    encryption_key: bytes
    mask_key: bytes
    seed_commitment: bytes


@dataclass(frozen=True)
class SealedShares:
    sender: str
    receiver: str
    ciphertext: bytes


@dataclass(frozen=True)
class ConsistencyTag:
    sender: str
    receiver: str
    tag: bytes


@dataclass(frozen=True)
class SecAggStep:
    """Server -> client: the next phase, with what the client needs for it."""

    round: int
    phase: str
    keys: tuple[PublicKeys, ...] = ()
    shares: tuple[SealedShares, ...] = ()
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    tags: tuple[ConsistencyTag, ...] = ()


@dataclass(frozen=True)
class SecAggMessage:
    """Client -> server: its answer in one phase."""

    session_id: str
    round: int
    phase: str
    keys: PublicKeys | None = None
    shares: tuple[SealedShares, ...] = ()
    tags: tuple[ConsistencyTag, ...] = ()
    seed_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> share of its self-mask seed (survivors)
    key_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> share of its mask key (dropped)
    withdraw: str = ""  # set: this client leaves the round, and why (it lost its keys, a check failed)
