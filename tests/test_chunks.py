"""Chunking: bounded slices, exact reassembly, and refusal of oversize, truncated, padded and tampered streams."""

from __future__ import annotations

import hashlib

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from fedtl.common import chunks
from fedtl.common.errors import CorruptError, DigestMismatch, OversizeError, TruncatedError


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 700))
def test_split_then_assemble_gives_the_same_bytes(blob: bytes, size: int) -> None:
    pieces = list(chunks.split(blob, size))
    assert all(0 < len(p) <= size for p in pieces)
    assembler = chunks.BlobAssembler(chunks.manifest_of(blob), max_bytes=len(blob))
    for p in pieces:
        assembler.add(p)
    assert bytes(assembler.finish()) == blob


def test_split_is_zero_copy() -> None:
    blob = bytearray(b"abcdef")
    first = next(chunks.split(blob, 4))
    blob[0] = ord("z")
    assert bytes(first) == b"zbcd"


def test_chunks_stay_below_the_grpc_default_message_cap() -> None:
    with pytest.raises(ValueError):
        list(chunks.split(b"x", chunks.MAX_CHUNK_BYTES))


def test_oversize_announcement_is_refused_before_allocating() -> None:
    with pytest.raises(OversizeError):
        chunks.BlobAssembler(chunks.Manifest(10**15, "0" * 64), max_bytes=100)


def test_more_bytes_than_announced_are_refused() -> None:
    a = chunks.BlobAssembler(chunks.manifest_of(b"abc"), max_bytes=3)
    a.add(b"abc")
    with pytest.raises(OversizeError):
        a.add(b"d")


def test_truncated_stream_is_refused() -> None:
    a = chunks.BlobAssembler(chunks.manifest_of(b"abcdef"), max_bytes=6)
    a.add(b"abc")
    with pytest.raises(TruncatedError):
        a.finish()


def test_tampered_bytes_fail_the_digest() -> None:
    a = chunks.BlobAssembler(chunks.manifest_of(b"abcdef"), max_bytes=6)
    a.add(b"abcdeX")
    with pytest.raises(DigestMismatch):
        a.finish()


def test_malformed_digest_and_empty_chunks_are_refused() -> None:
    with pytest.raises(CorruptError):
        chunks.BlobAssembler(chunks.Manifest(3, "XYZ"), max_bytes=3)
    a = chunks.BlobAssembler(chunks.Manifest(1, hashlib.sha256(b"a").hexdigest()), max_bytes=1)
    with pytest.raises(CorruptError):
        a.add(b"")


def test_hashing_at_the_end_verifies_the_same_way() -> None:
    a = chunks.BlobAssembler(chunks.manifest_of(b"abcdef"), max_bytes=6, hash_while_receiving=False)
    a.add(b"abc")
    a.add(b"def")
    assert bytes(a.finish()) == b"abcdef"
    b = chunks.BlobAssembler(chunks.manifest_of(b"abcdef"), max_bytes=6, hash_while_receiving=False)
    b.add(b"abcdeX")
    with pytest.raises(DigestMismatch):
        b.finish()
