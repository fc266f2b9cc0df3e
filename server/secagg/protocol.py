"""The coordinator's side of one secure round (SecAgg+, Bell et al. 2020, with the consistency check of Bonawitz et al.
2017). It relays keys, sealed shares and tags it cannot read, sums masked inputs it cannot read, and at the end removes
the masks with the secrets the survivors reveal, learning only the sum. Plain state, no I/O: the run loop opens the
phases, the coordinator routes client messages to `receive`, and the round's aggregator calls `unmask`.

Phases (server names; docs/secure-aggregation.md has every message): advertise (keys, answered with the training
task done) -> share (sealed shares to neighbours) -> train (the masked input, an upload) -> check (tags over the
survivor list) -> unmask (survivors reveal shares of survivors' self-mask seeds and of dropped clients' mask keys,
never both for one client). Every rebuilt secret is checked against what its owner committed to in advertise; with
too few or wrong shares the round fails closed (AggregationError): nothing partial reaches the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np

from fedtl.common.config import Instruction, TrainTask
from fedtl.common.errors import CorruptError, UpdateRejected
from fedtl.common.secagg import crypto, shamir
from fedtl.common.secagg.graph import neighbours
from fedtl.common.secagg.messages import (
    ADVERTISE,
    CHECK,
    MASKED_INPUT,
    SHARE,
    UNMASK,
    ConsistencyTag,
    PublicKeys,
    SealedShares,
    SecAggMessage,
    SecAggSetup,
    SecAggStep,
)
from fedtl.server.strategies.base import RoundProtocol
from fedtl.server.strategies.stacked import AggregationError

logger = logging.getLogger(__name__)

TRAIN = "train"  # the round's update phase carries the masked inputs
PHASES = (ADVERTISE, SHARE, TRAIN, CHECK, UNMASK)


class SecAggRound(RoundProtocol):
    phases = PHASES

    def __init__(self, setup: SecAggSetup, round_number: int, model_digest: str) -> None:
        self.setup, self.round = setup, round_number
        self.needed = setup.threshold
        self.participants = sorted(setup.participants)
        self.index = {name: i + 1 for i, name in enumerate(self.participants)}  # Shamir x of each participant
        self.context = crypto.context_of(round_number, setup.attempt, model_digest, self.participants)
        self.graph = neighbours(self.participants, setup.degree, setup.graph_seed)
        self.keys: dict[str, PublicKeys] = {}  # U1: who advertised
        self.sealed: dict[str, dict[str, SealedShares]] = {}  # receiver -> sender -> sealed share
        self.sharers: set[str] = set()  # U2
        self.survivors: tuple[str, ...] = ()  # U3, fixed when the check phase opens
        self.tags: dict[str, dict[str, ConsistencyTag]] = {}  # receiver -> sender -> tag
        self.seed_shares: dict[str, dict[int, int]] = {}  # owner -> holder's x -> share
        self.key_shares: dict[str, dict[int, int]] = {}
        self.wrong_shares: set[str] = set()  # holders whose revealed share was off the owner's polynomial

    # ---------------------------------------------------------------- RoundProtocol

    def task(self, task: Instruction) -> Instruction:
        assert isinstance(task, TrainTask)
        return dataclasses.replace(task, secagg=self.setup)

    def instruction(self, phase: str, client: str) -> Instruction:
        return self.step(phase, client)

    def phase_of(self, message: object) -> str:
        assert isinstance(message, SecAggMessage)
        return TRAIN if message.phase == MASKED_INPUT else message.phase

    def receive(self, phase: str, client: str, message: object) -> None:
        assert isinstance(message, SecAggMessage)
        if message.withdraw:
            raise UpdateRejected("withdrew", f"client {client} left secure round {self.round}: {message.withdraw}")
        if phase == ADVERTISE:
            self.advertise(client, message.keys)
        elif phase == SHARE:
            self.share(client, message.shares)
        elif phase == CHECK:
            self.check(client, message.tags)
        elif phase == UNMASK:
            self.reveal(client, message.seed_shares, message.key_shares)
        else:
            raise CorruptError("secure aggregation: the masked input comes as an upload, not a message")

    def opened(self, phase: str, clients: list[str]) -> None:
        if phase == CHECK:
            self.survivors = tuple(sorted(set(clients) & self.sharers))

    # ---------------------------------------------------------------- client messages, one per phase

    def advertise(self, client: str, keys: PublicKeys | None) -> None:
        if keys is None or keys.client != client:
            raise CorruptError("secure aggregation: advertise your own keys")
        if keys.encryption_key == keys.mask_key or any(
                k.encryption_key in (keys.encryption_key, keys.mask_key) or k.mask_key in (keys.encryption_key, keys.mask_key)
                for k in self.keys.values()):
            raise CorruptError("secure aggregation: these public keys are already in use")
        self.keys[client] = keys

    def share(self, client: str, sealed: tuple[SealedShares, ...]) -> None:
        expected = {j for j in self.graph[client] if j in self.keys}
        got = {s.receiver for s in sealed}
        if any(s.sender != client for s in sealed) or got != expected or len(sealed) != len(expected):
            raise CorruptError(f"secure aggregation: {client} must send one sealed share to each of its {len(expected)} neighbours")
        for s in sealed:
            self.sealed.setdefault(s.receiver, {})[client] = s
        self.sharers.add(client)

    def check(self, client: str, tags: tuple[ConsistencyTag, ...]) -> None:
        allowed = set(self.graph[client]) & set(self.survivors)
        if any(t.sender != client or t.receiver not in allowed for t in tags) or len({t.receiver for t in tags}) != len(tags):
            raise CorruptError("secure aggregation: tags go to the sender's surviving neighbours, one each")
        for t in tags:
            self.tags.setdefault(t.receiver, {})[client] = t

    def reveal(self, client: str, seed_shares: dict[str, bytes], key_shares: dict[str, bytes]) -> None:
        mine = set(self.sealed.get(client, {}))  # the neighbours that shared with this client
        survivors, dropped = set(self.survivors), self.sharers - set(self.survivors)
        if set(seed_shares) != (mine & survivors) | {client} or set(key_shares) != mine & dropped:
            raise CorruptError("secure aggregation: reveal seed shares of yourself and your surviving neighbours and key shares "
                               "of dropped ones, exactly those")
        try:
            seeds = {owner: shamir.from_bytes(share) for owner, share in seed_shares.items()}
            keys = {owner: shamir.from_bytes(share) for owner, share in key_shares.items()}
        except ValueError as exc:
            raise CorruptError(f"secure aggregation: {exc}") from None
        x = self.index[client]
        for owner, share in seeds.items():
            self.seed_shares.setdefault(owner, {})[x] = share
        for owner, share in keys.items():
            self.key_shares.setdefault(owner, {})[x] = share

    # ---------------------------------------------------------------- what each client is sent

    def step(self, phase: str, client: str) -> SecAggStep:
        if phase == SHARE:
            return SecAggStep(self.round, SHARE, keys=tuple(self.keys[n] for n in sorted(self.keys)))
        if phase == TRAIN:
            held = self.sealed.get(client, {})
            return SecAggStep(self.round, MASKED_INPUT, shares=tuple(held[s] for s in sorted(held)))
        if phase == CHECK:
            return SecAggStep(self.round, CHECK, survivors=self.survivors)
        if phase == UNMASK:
            dropped = tuple(sorted(self.sharers - set(self.survivors)))
            tags = self.tags.get(client, {})
            return SecAggStep(self.round, UNMASK, survivors=self.survivors, dropped=dropped, tags=tuple(tags[s] for s in sorted(tags)))
        raise ValueError(f"no step for phase {phase!r}")

    # ---------------------------------------------------------------- the end

    def unmask(self, total: np.ndarray) -> np.ndarray:
        """The plain sum of the survivors' inputs from the masked one (in place). Raises AggregationError (fail closed)
        when a secret cannot be rebuilt from shares that match its owner's commitment."""
        t, masks = self.setup.threshold, []
        for owner in self.survivors:
            commitment = self.keys[owner].seed_commitment
            seed = self._rebuild(self.seed_shares.get(owner, {}), t, lambda s, c=commitment: hashlib.sha256(_bytes32(s)).digest() == c,
                                 f"the self-mask seed of {owner}")
            masks.append((_bytes32(seed), -1))
        for owner in sorted(self.sharers - set(self.survivors)):
            public = self.keys[owner].mask_key
            secret = self._rebuild(self.key_shares.get(owner, {}), t, lambda s, p=public: crypto.public_of(_bytes32(s)) == p,
                                   f"the mask key of dropped client {owner}")
            for survivor in self.graph[owner]:
                if survivor in self.survivors:
                    pair = crypto.agree(_bytes32(secret), self.keys[survivor].mask_key, b"mask", self.context)
                    masks.append((pair, -1 if survivor < owner else +1))  # the lower name added +mask for the pair
        crypto.add_masks(total, masks)  # only once every secret was rebuilt: a round that fails closed touches nothing
        if self.wrong_shares:
            logger.warning("secure round %d: wrong shares revealed by %s (ignored; the secrets were rebuilt from others)",
                           self.round, ", ".join(sorted(self.wrong_shares)[:10]))
        return total

    def _rebuild(self, shares: dict[int, int], threshold: int, valid, what: str) -> int:  # type: ignore[no-untyped-def]
        if len(shares) < threshold:
            raise AggregationError(f"secure aggregation failed closed: {len(shares)} shares of {what}, {threshold} needed")
        found = shamir.combine_checked(shares, threshold, lambda s: s < (1 << 256) and valid(s))
        if found is None:
            raise AggregationError(f"secure aggregation failed closed: no {threshold} of the shares of {what} rebuild what it committed to")
        secret, subset = found
        holders = {x: name for name, x in self.index.items()}
        self.wrong_shares.update(holders[x] for x in shamir.off_polynomial(shares, subset))
        return secret


def _bytes32(value: int) -> bytes:
    return value.to_bytes(32, "big")
