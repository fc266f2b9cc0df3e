"""Data-carrying messages (Chunk.data, UploadMessage.data), framed and unframed by hand.

Both are a single length-delimited field 2, so one copy goes into the message instead of protobuf's two, and the
payload is read as a zero-copy view of the received bytes. The bytes are exactly what protobuf produces
(tests/test_wire.py pins it); anything else goes through the protobuf parser (common/wire.py).
"""

from __future__ import annotations

DATA_TAG = 0x12  # field 2, wire type 2 (length-delimited), in both Chunk and UploadMessage


def frame_data(piece: bytes | bytearray | memoryview) -> bytes:
    """The serialised message {data: piece}, built with one copy of `piece`."""
    return b"".join((bytes((DATA_TAG,)), _varint(len(piece)), piece))


def data_view(raw: bytes) -> memoryview | None:
    """The payload of a message that is exactly one data field, without copying; None for anything else."""
    if len(raw) < 2 or raw[0] != DATA_TAG:
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(raw) and pos < 11:
        byte = raw[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        return None
    if pos + length != len(raw):
        return None
    return memoryview(raw)[pos:]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
