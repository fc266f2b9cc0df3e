"""Key agreement, authenticated encryption, tags and mask expansion, all from `cryptography` (PyCA).

X25519 for agreement, HKDF-SHA256 to derive keys, with a context (`info`) that binds the round, the global model's
digest and the participant list: a coordinator that shows clients different models or lists gets keys that do
not match, so masks do not cancel and tags do not verify. ChaCha20-Poly1305 encrypts shares; HMAC-SHA256 tags the
consistency check; masks are a ChaCha20 keystream from a 256-bit seed (never a general-purpose RNG).
"""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32


def keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 keys as raw bytes."""
    private = X25519PrivateKey.generate()
    return _raw_private(private), _raw_public(private.public_key())


def public_of(private: bytes) -> bytes:
    return _raw_public(X25519PrivateKey.from_private_bytes(private).public_key())


def agree(private: bytes, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key both ends derive alike: X25519, then HKDF-SHA256 over purpose || context."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose + b"|" + context).derive(shared)


def context_of(round_number: int, attempt: int, model_digest: str, participants: list[str]) -> bytes:
    """What every derived key depends on: the round, the model it answers, and exactly who takes part."""
    h = hashlib.sha256(f"fedtl-secagg|{round_number}|{attempt}|{model_digest}|".encode())
    for name in sorted(participants):
        h.update(name.encode() + b"\0")
    return h.digest()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Raises cryptography's InvalidTag when the ciphertext or its context was tampered with."""
    return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], aad)


def tag(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def tags_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


MASK_CHUNK = 1 << 16  # words of keystream made at a time (512 KB at 64 bits): in cache, and no mask is ever held whole


def mask(seed: bytes, count: int, dtype: type = np.uint64) -> np.ndarray:
    """`count` words (uint16, uint32 or uint64) of the ChaCha20 keystream keyed by the 32-byte seed (zero nonce: one stream per seed)."""
    out: np.ndarray = np.zeros(count, dtype=dtype)
    add_mask(out, seed, +1)
    return out


def add_mask(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """vector += sign * mask(seed), modulo 2^16, 2^32 or 2^64 (unsigned arithmetic wraps)."""
    add_masks(vector, [(seed, sign)])


def add_masks(vector: np.ndarray, masks: list[tuple[bytes, int]]) -> None:
    """vector += sum of sign * mask(seed) over `masks`, chunk by chunk: each piece of the vector stays in cache while
    every mask's keystream for it is made and added, so the vector crosses memory once, not once per mask."""
    if any(len(seed) != KEY_BYTES for seed, _ in masks):
        raise ValueError("a mask seed is 32 bytes")
    if vector.dtype not in (np.uint16, np.uint32, np.uint64):
        raise TypeError("masks apply to uint16, uint32 or uint64 vectors")
    streams = [(Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor(), np.add if sign > 0 else np.subtract)
               for seed, sign in masks]
    chunk, width = min(MASK_CHUNK, vector.size), vector.itemsize
    zeros, buffer = bytes(width * chunk), bytearray(width * chunk + 63)  # update_into wants room for a block beyond the data
    words = np.frombuffer(buffer, dtype=vector.dtype.newbyteorder("<"), count=chunk)
    for start in range(0, vector.size, chunk):
        piece = vector[start : start + chunk]
        for encryptor, combine in streams:
            encryptor.update_into(zeros[: width * piece.size], buffer)
            combine(piece, words[: piece.size], out=piece)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
