"""Update codecs by name; `raw` is the default. Adding one is a module plus a line in CODECS."""

from __future__ import annotations

import torch

from fedtl.common.codecs.base import Specs, UpdateCodec, UpdateSource
from fedtl.common.codecs.int8 import Int8Codec
from fedtl.common.codecs.lossy import CastCodec
from fedtl.common.codecs.raw import RawCodec
from fedtl.common.codecs.sparse import TopKCodec
from fedtl.common.errors import ConfigError

CODECS: dict[str, UpdateCodec] = {
    "raw": RawCodec(),
    "fp16": CastCodec("fp16", torch.float16),
    "bf16": CastCodec("bf16", torch.bfloat16),
    "int8": Int8Codec(),
}
LOSSLESS = frozenset({"raw"})
DEFAULT = "raw"
PARAMETRISED = {"topk": False, "topk+int8": True}  # "topk:FRACTION", "topk+int8:FRACTION": int8 values or not
CHOICES = (*sorted(CODECS), "topk:FRACTION", "topk+int8:FRACTION")

__all__ = ["CHOICES", "CODECS", "DEFAULT", "LOSSLESS", "Specs", "UpdateCodec", "UpdateSource", "get"]


def get(name: str) -> UpdateCodec:
    if name in CODECS:
        return CODECS[name]
    family, _, fraction = name.partition(":")
    if family in PARAMETRISED:
        try:
            value = float(fraction)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # NaN fails too
            raise ConfigError(f"update encoding {name!r}: {family} needs a fraction in (0, 1] after the colon, e.g. {family}:0.01")
        return TopKCodec(value, PARAMETRISED[family])
    raise ConfigError(f"update encoding {name!r} is unknown; this release knows {', '.join(CHOICES)}")
