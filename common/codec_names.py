"""Codec names, checked without loading torch: flags are parsed (and --help printed) before any heavy import.
common/codecs holds the codecs themselves under these names."""

from __future__ import annotations

from fedtl.common.errors import ConfigError

PLAIN = ("bf16", "fp16", "int8", "raw")  # upload codecs without a parameter
PARAMETRISED = {"topk": False, "topk+int8": True}  # "topk:FRACTION", "topk+int8:FRACTION": int8 values or not
CHOICES = (*PLAIN, "topk:FRACTION", "topk+int8:FRACTION")
DEFAULT = "raw"
DOWNLOAD = ("raw", "fp16", "bf16", "int8", "delta")  # how the coordinator may send models (--download-codec)


def topk_name(fraction: float, int8: bool) -> str:
    return f"topk{'+int8' if int8 else ''}:{fraction:g}"


def topk_fraction(name: str) -> tuple[float, bool] | None:
    """A parametrised codec's (fraction, int8), checked; None for a plain name. Raises ConfigError for anything else."""
    if name in PLAIN:
        return None
    family, _, fraction = name.partition(":")
    if family in PARAMETRISED:
        try:
            value = float(fraction)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:  # NaN fails too
            raise ConfigError(f"update encoding {name!r}: {family} needs a fraction in (0, 1] after the colon, e.g. {family}:0.01")
        return value, PARAMETRISED[family]
    raise ConfigError(f"update encoding {name!r} is unknown; this release knows {', '.join(CHOICES)}")


def canonical(name: str) -> str:
    """topk:0.010 -> topk:0.01 (what clients are told and records say); a plain name as it is."""
    parsed = topk_fraction(name)
    return name if parsed is None else topk_name(*parsed)
