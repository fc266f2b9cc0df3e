"""Update codecs by name; `raw` is the default. Adding one is a module plus a line in CODECS."""

from __future__ import annotations

import torch

from common.codecs.base import Specs, UpdateCodec, UpdateSource
from common.codecs.lossy import CastCodec, Int8Codec
from common.codecs.raw import RawCodec
from common.errors import ConfigError

CODECS: dict[str, UpdateCodec] = {
    "raw": RawCodec(),
    "fp16": CastCodec("fp16", torch.float16),
    "bf16": CastCodec("bf16", torch.bfloat16),
    "int8": Int8Codec(),
}
LOSSLESS = frozenset({"raw"})
DEFAULT = "raw"

__all__ = ["CODECS", "DEFAULT", "LOSSLESS", "Specs", "UpdateCodec", "UpdateSource", "get"]


def get(name: str) -> UpdateCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"update encoding {name!r} is unknown; this release knows {', '.join(sorted(CODECS))}") from None
