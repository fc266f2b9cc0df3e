"""Secure-aggregation messages <-> protobuf (the second common module that imports protos, beside wire.py).

Every byte string and list from a peer is bounded here: keys 32 bytes, commitments and tags 32, a sealed share
at most 256, at most MAX_PARTIES entries in any list.
"""

from __future__ import annotations

from fedtl.common.errors import CorruptError
from fedtl.common.secagg.messages import PHASES, ConsistencyTag, PublicKeys, SealedShares, SecAggMessage, SecAggSetup, SecAggStep
from fedtl.common.validated_sum.messages import ValidatedSetup
from fedtl.protos import federation_pb2 as pb

MAX_PARTIES = 10_000
MAX_SEALED = 256
MAX_REASON = 300  # characters of a withdrawal's reason kept (the console escapes them)


def setup_to_proto(s: SecAggSetup) -> pb.SecAggSetup:
    return pb.SecAggSetup(participants=list(s.participants), threshold=s.threshold, degree=s.degree, graph_seed=s.graph_seed,
                          bits=s.bits, clip=s.clip, max_weight=s.max_weight, attempt=s.attempt, modulus_bits=s.modulus_bits,
                          dp_noise=s.noise)


def setup_from_proto(m: pb.SecAggSetup) -> SecAggSetup:
    _bounded(m.participants)
    if m.modulus_bits not in (16, 32, 64) or len(m.graph_seed) > 64:
        raise CorruptError(f"secure aggregation: modulus of {m.modulus_bits} bits (16, 32 or 64), or an oversized graph seed")
    if not 0 <= m.dp_noise <= 1e6:  # NaN fails too
        raise CorruptError(f"secure aggregation: a noise multiplier of {m.dp_noise} (0..1e6)")
    return SecAggSetup(tuple(_names(m.participants)), m.threshold, m.degree, bytes(m.graph_seed), m.bits, m.clip, m.max_weight,
                       m.attempt or 1, m.modulus_bits, m.dp_noise)


def keys_to_proto(k: PublicKeys) -> pb.PublicKeys:
    return pb.PublicKeys(client=k.client, encryption_key=k.encryption_key, mask_key=k.mask_key, seed_commitment=k.seed_commitment)


def keys_from_proto(m: pb.PublicKeys) -> PublicKeys:
    for what, value in (("encryption_key", m.encryption_key), ("mask_key", m.mask_key), ("seed_commitment", m.seed_commitment)):
        if len(value) != 32:
            raise CorruptError(f"secure aggregation: {what} must be 32 bytes, got {len(value)}")
    return PublicKeys(_name(m.client), bytes(m.encryption_key), bytes(m.mask_key), bytes(m.seed_commitment))


def _sealed(m: pb.SealedShares) -> SealedShares:
    if len(m.ciphertext) > MAX_SEALED:
        raise CorruptError(f"secure aggregation: a sealed share is at most {MAX_SEALED} bytes")
    return SealedShares(_name(m.sender), _name(m.receiver), bytes(m.ciphertext))


def _tag(m: pb.ConsistencyTag) -> ConsistencyTag:
    if len(m.tag) != 32:
        raise CorruptError("secure aggregation: a consistency tag is 32 bytes")
    return ConsistencyTag(_name(m.sender), _name(m.receiver), bytes(m.tag))


def step_to_proto(s: SecAggStep) -> pb.SecAggStep:
    return pb.SecAggStep(
        round=s.round, phase=s.phase, keys=[keys_to_proto(k) for k in s.keys], survivors=list(s.survivors), dropped=list(s.dropped),
        shares=[pb.SealedShares(sender=x.sender, receiver=x.receiver, ciphertext=x.ciphertext) for x in s.shares],
        tags=[pb.ConsistencyTag(sender=t.sender, receiver=t.receiver, tag=t.tag) for t in s.tags],
    )


def step_from_proto(m: pb.SecAggStep) -> SecAggStep:
    _bounded(m.keys, m.shares, m.survivors, m.dropped, m.tags)
    return SecAggStep(m.round, _phase(m.phase), tuple(keys_from_proto(k) for k in m.keys), tuple(_sealed(x) for x in m.shares),
                      tuple(_names(m.survivors)), tuple(_names(m.dropped)), tuple(_tag(t) for t in m.tags))


def message_to_proto(msg: SecAggMessage) -> pb.SecAggMessage:
    return pb.SecAggMessage(
        session_id=msg.session_id, round=msg.round, phase=msg.phase, keys=keys_to_proto(msg.keys) if msg.keys else None,
        shares=[pb.SealedShares(sender=x.sender, receiver=x.receiver, ciphertext=x.ciphertext) for x in msg.shares],
        tags=[pb.ConsistencyTag(sender=t.sender, receiver=t.receiver, tag=t.tag) for t in msg.tags],
        seed_shares=[pb.RevealedShare(owner=o, share=v) for o, v in msg.seed_shares.items()],
        key_shares=[pb.RevealedShare(owner=o, share=v) for o, v in msg.key_shares.items()], withdraw=msg.withdraw,
    )


def message_from_proto(m: pb.SecAggMessage) -> SecAggMessage:
    _bounded(m.shares, m.tags, m.seed_shares, m.key_shares)
    if len(m.session_id) > 64:
        raise CorruptError("session_id is longer than 64 characters")
    return SecAggMessage(
        m.session_id, m.round, _phase(m.phase), keys_from_proto(m.keys) if m.HasField("keys") else None,
        tuple(_sealed(x) for x in m.shares), tuple(_tag(t) for t in m.tags),
        {_name(r.owner): _share(r.share) for r in m.seed_shares}, {_name(r.owner): _share(r.share) for r in m.key_shares},
        m.withdraw[:MAX_REASON],
    )


def _phase(phase: str) -> str:
    if phase not in PHASES:
        raise CorruptError(f"secure aggregation: unknown phase {phase[:20]!r}")
    return phase


def _name(name: str) -> str:
    if not 0 < len(name) <= 128:
        raise CorruptError("secure aggregation: a client name is 1-128 characters")
    return name


def _names(names) -> list[str]:  # type: ignore[no-untyped-def]
    return [_name(n) for n in names]


def _share(data: bytes) -> bytes:
    if len(data) > 80:
        raise CorruptError("secure aggregation: a revealed share is at most 80 bytes")
    return bytes(data)


def _bounded(*lists) -> None:  # type: ignore[no-untyped-def]
    if any(len(x) > MAX_PARTIES for x in lists):
        raise CorruptError(f"secure aggregation: a list of more than {MAX_PARTIES} entries")


def validated_to_proto(v: ValidatedSetup) -> pb.ValidatedSetup:
    return pb.ValidatedSetup(shape=pb.ValidatedShape(coordinates=v.coordinates, bits=v.bits, bound=v.bound), clip=v.clip, helper=v.helper)


def validated_from_proto(m: pb.ValidatedSetup) -> ValidatedSetup:
    if not 1 <= m.shape.bits <= 16 or not 0 < m.clip < 1e12 or len(m.helper) > 300:  # NaN fails too
        raise CorruptError(f"validated aggregation: {m.shape.bits} bits (1..16), clip {m.clip} or a helper address of {len(m.helper)} characters")
    return ValidatedSetup(m.shape.coordinates, m.shape.bits, m.shape.bound, m.clip, m.helper)
