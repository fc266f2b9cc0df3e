"""Update codecs by name; `raw` is the default. Adding one is a module, a line in CODECS and its name in
common/codec_names.py (flags are checked against the names without loading torch)."""

from __future__ import annotations

import torch

from fedtl.common import codec_names as names
from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.int8 import Int8Codec
from fedtl.common.codecs.lossy import CastCodec
from fedtl.common.codecs.raw import RawCodec
from fedtl.common.codecs.sparse import TopKCodec

CODECS: dict[str, UpdateCodec] = {
    "raw": RawCodec(),
    "fp16": CastCodec("fp16", torch.float16),
    "bf16": CastCodec("bf16", torch.bfloat16),
    "int8": Int8Codec(),
}
LOSSLESS = frozenset({"raw"})
DEFAULT = names.DEFAULT
CHOICES = names.CHOICES

__all__ = ["CHOICES", "CODECS", "DEFAULT", "LOSSLESS", "Specs", "UpdateCodec", "UpdateSource", "get"]


def get(name: str) -> UpdateCodec:
    parsed = names.topk_fraction(name)  # refuses unknown names
    return CODECS[name] if parsed is None else TopKCodec(*parsed)
