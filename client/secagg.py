"""A client's side of one secure round (SecAgg+ with the consistency check; docs/secure-aggregation.md). No network:
`start` and `handle` return what to send, so the whole protocol runs in tests without a server.

What a client checks before it gives anything away: the round's parameters are safe (params.problem), its own keys
came back unchanged, every key and share belongs to a participant and neighbour, every share opens under a key
derived from the round, the global model's digest and the participant list (a coordinator that showed clients
different models or lists is caught here), the survivor list is the same in check and unmask and at least t - 1
neighbours confirmed it with valid tags. Then it reveals, for each neighbour, the share of its self-mask seed (it
survived) or of its mask key (it dropped out), never both. Any failed check makes it withdraw (`Abort`).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.exceptions import InvalidTag

from fedtl.common.secagg import crypto, fixedpoint, noise, shamir
from fedtl.common.secagg.graph import effective_degree, neighbours
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
from fedtl.common.secagg.params import problem


class Abort(Exception):
    """This client leaves the secure round; the message says why (it is sent to the coordinator and logged)."""


class SecureRound:
    def __init__(self, setup: SecAggSetup, round_number: int, model_digest: str, me: str, session_id: str, encoded: np.ndarray) -> None:
        participants = sorted(setup.participants)
        if me not in participants or len(set(participants)) != len(participants):
            raise Abort("the round's participant list does not name this client once")
        if setup.degree != effective_degree(len(participants), setup.degree):
            raise Abort(f"neighbour degree {setup.degree} does not fit {len(participants)} participants")
        issue = problem(len(participants), setup.degree, setup.threshold, setup.bits, setup.max_weight)
        if issue:
            raise Abort(f"unsafe parameters: {issue}")
        if setup.noise and setup.max_weight != 1:
            raise Abort("distributed noise is calibrated to updates of weight 1, but the round allows larger weights")
        noise_std = noise.sum_std(setup.noise, encoded.size - fixedpoint.EXTRA, setup.bits, len(participants), len(participants))
        if fixedpoint.capacity_bits(len(participants), setup.max_weight, setup.bits, noise_std) > setup.modulus_bits:
            raise Abort(f"a {setup.modulus_bits}-bit modulus would let the sum overflow")
        if encoded.dtype != fixedpoint.WORDS[setup.modulus_bits]:
            raise Abort("the input is not in the round's word size")
        self.setup, self.round, self.me, self.session_id = setup, round_number, me, session_id
        self.index = {name: i + 1 for i, name in enumerate(participants)}
        self.context = crypto.context_of(round_number, setup.attempt, model_digest, participants)
        self.neighbours = set(neighbours(participants, setup.degree, setup.graph_seed)[me])
        self.input = encoded  # words of the round's modulus, masked in place when the time comes
        self._enc_private, enc_public = crypto.keypair()
        self._mask_private, mask_public = crypto.keypair()
        self._seed = os.urandom(crypto.KEY_BYTES)
        self.keys = PublicKeys(me, enc_public, mask_public, hashlib.sha256(self._seed).digest())
        self.peers: dict[str, PublicKeys] = {}  # neighbours that advertised
        self.held: dict[str, tuple[int, int]] = {}  # neighbour -> (share of its mask key, share of its seed)
        self.survivors: tuple[str, ...] = ()
        self._own_seed_share = 0
        self.done: list[str] = [ADVERTISE]  # phases answered, in order

    def start(self) -> SecAggMessage:
        return SecAggMessage(self.session_id, self.round, ADVERTISE, keys=self.keys)

    def withdraw(self, phase: str, reason: str) -> SecAggMessage:
        return SecAggMessage(self.session_id, self.round, phase, withdraw=reason)

    def handle(self, step: SecAggStep) -> SecAggMessage | np.ndarray:
        """The answer to a phase: a message, or (masked_input) the masked vector to upload."""
        order = {SHARE: ADVERTISE, MASKED_INPUT: SHARE, CHECK: MASKED_INPUT, UNMASK: CHECK}
        if step.round != self.round or order.get(step.phase) != self.done[-1]:
            raise Abort(f"step {step.phase!r} of round {step.round} arrived out of order (after {self.done[-1]})")
        self.done.append(step.phase)
        if step.phase == SHARE:
            return SecAggMessage(self.session_id, self.round, SHARE, shares=self._share(step.keys))
        if step.phase == MASKED_INPUT:
            return self._masked_input(step.shares)
        if step.phase == CHECK:
            return SecAggMessage(self.session_id, self.round, CHECK, tags=self._check(step.survivors))
        seeds, keys = self._unmask(step.survivors, step.tags)
        return SecAggMessage(self.session_id, self.round, UNMASK, seed_shares=seeds, key_shares=keys)

    # ---------------------------------------------------------------- phases

    def _share(self, keys: tuple[PublicKeys, ...]) -> tuple[SealedShares, ...]:
        by_client = {k.client: k for k in keys}
        if len(by_client) != len(keys) or by_client.get(self.me) != self.keys:
            raise Abort("the coordinator's key list repeats a client or changed this client's keys")
        if any(name not in self.index for name in by_client):
            raise Abort("the coordinator's key list names a client outside the round")
        publics = [k.encryption_key for k in keys] + [k.mask_key for k in keys]
        if len(set(publics)) != len(publics):
            raise Abort("the coordinator's key list repeats a public key")
        self.peers = {n: k for n, k in by_client.items() if n in self.neighbours}
        if len(self.peers) < self.setup.threshold:
            raise Abort(f"only {len(self.peers)} of this client's neighbours advertised keys; {self.setup.threshold} must hold its shares")
        targets = sorted(self.peers)
        xs = [self.index[n] for n in targets] + [self.index[self.me]]  # the neighbours' shares, and one this client keeps
        key_shares = shamir.split(int.from_bytes(self._mask_private, "big"), xs, self.setup.threshold)
        seed_shares = shamir.split(int.from_bytes(self._seed, "big"), xs, self.setup.threshold)
        self._own_seed_share = seed_shares[self.index[self.me]]  # its own mask-key share is never revealed: dropped
        sealed = []
        for name, x in zip(targets, xs):
            plaintext = shamir.to_bytes(key_shares[x]) + shamir.to_bytes(seed_shares[x])
            sealed.append(SealedShares(self.me, name, crypto.seal(self._pair_key(name, b"share"), plaintext, self._aad(self.me, name))))
        return tuple(sealed)

    def _masked_input(self, shares: tuple[SealedShares, ...]) -> np.ndarray:
        for s in shares:
            if s.receiver != self.me or s.sender not in self.peers or s.sender in self.held:
                raise Abort(f"a share from {s.sender[:64]!r} was not addressed to this client by a neighbour, or came twice")
            try:
                plaintext = crypto.open_sealed(self._pair_key(s.sender, b"share"), s.ciphertext, self._aad(s.sender, self.me))
                self.held[s.sender] = (shamir.from_bytes(plaintext[:shamir.SHARE_BYTES]), shamir.from_bytes(plaintext[shamir.SHARE_BYTES:]))
            except (InvalidTag, ValueError):
                raise Abort(f"the share from {s.sender} did not open: {s.sender} is faulty, or the coordinator showed us different "
                            "models or participant lists") from None
        masked = self.input
        masks = [(self._seed, +1)] + [  # and one per neighbour that shared: the masks the coordinator can cancel
            (crypto.agree(self._mask_private, self.peers[name].mask_key, b"mask", self.context), +1 if self.me < name else -1)
            for name in sorted(self.held)]
        crypto.add_masks(masked, masks)
        self.input = np.empty(0, dtype=masked.dtype)  # nothing unmasked stays behind
        return masked

    def _check(self, survivors: tuple[str, ...]) -> tuple[ConsistencyTag, ...]:
        if self.me not in survivors or len(set(survivors)) != len(survivors) or len(survivors) < self.setup.threshold:
            raise Abort(f"the survivor list has {len(survivors)} clients (needs {self.setup.threshold}, this one among them)")
        if not set(survivors) & self.neighbours <= set(self.held):
            raise Abort("the survivor list names a neighbour that never shared with this client")
        self.survivors = tuple(survivors)
        return tuple(ConsistencyTag(self.me, n, crypto.tag(self._pair_key(n, b"check"), self._survivor_bytes()))
                     for n in sorted(set(survivors) & set(self.held)))

    def _unmask(self, survivors: tuple[str, ...], tags: tuple[ConsistencyTag, ...]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        if tuple(survivors) != self.survivors:
            raise Abort("the coordinator changed the survivor list between check and unmask")
        confirmed = set()
        for t in tags:
            if t.receiver != self.me or t.sender not in self.held or t.sender not in self.survivors:
                raise Abort(f"a consistency tag from {t.sender[:64]!r} is not from a surviving neighbour")
            if not crypto.tags_equal(t.tag, crypto.tag(self._pair_key(t.sender, b"check"), self._survivor_bytes())):
                raise Abort(f"{t.sender} saw a different survivor list: the coordinator is not consistent")
            confirmed.add(t.sender)
        if len(confirmed) + 1 < self.setup.threshold:
            raise Abort(f"only {len(confirmed)} neighbours confirmed the survivor list; {self.setup.threshold - 1} must")
        seeds = {n: shamir.to_bytes(s) for n, (_, s) in self.held.items() if n in self.survivors}
        seeds[self.me] = shamir.to_bytes(self._own_seed_share)  # it survived: its seed is to be rebuilt anyway
        keys = {n: shamir.to_bytes(k) for n, (k, _) in self.held.items() if n not in self.survivors}  # never both for one client
        return seeds, keys

    # ---------------------------------------------------------------- helpers

    def _pair_key(self, peer: str, purpose: bytes) -> bytes:
        return crypto.agree(self._enc_private, self.peers[peer].encryption_key, purpose, self.context)

    def _aad(self, sender: str, receiver: str) -> bytes:
        return self.context + sender.encode() + b"\0" + receiver.encode()

    def _survivor_bytes(self) -> bytes:
        return b"survivors|" + b"\0".join(n.encode() for n in self.survivors)
