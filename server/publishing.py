"""How each trainable version goes down the wire (`--download-codec`), and the one rule that makes it safe:
the coordinator's own model becomes exactly what clients decode, before it is served, evaluated or
checkpointed. Clients train from, and the round log reports on, one and the same model: no silent drift.

- `raw` (default): the float32 tensors exactly.
- `fp16`, `bf16`, `int8`: the whole trainable segment in that codec (common/codecs/lossy.py, int8.py); the global
  model is replaced by its decoded form each version (int8: per-channel scales, unbiased rounding).
- `delta`: the change since the previous version (`trainable-delta`, naming that version's digest), next
  to the exact new version (`trainable`). A client holding the previous version adds the decoded steps and
  checks the sum's sha256 against the full version's; anyone else (a new or restarted client, a mismatch)
  downloads the full version. When few entries moved (the mean of top-k uploads moves at most the union of
  their supports) the steps go sparse and exact: every changed entry, float32, Rice-coded indices
  (`topk:F` with F covering all of them); otherwise as int8, since steps are far smaller than weights and
  8 bits of them lose little. Either way the rounding of one version is not compounded: the next delta
  starts from it.
"""

from __future__ import annotations

import math

import torch

from fedtl.common import codecs, tensorcodec
from fedtl.common.codec_names import DOWNLOAD
from fedtl.common.codecs import UpdateSource
from fedtl.common.codecs.delta import DELTA_SEGMENT, apply_steps, steps_writer
from fedtl.common.codecs.int8 import Int8Codec
from fedtl.common.errors import ConfigError

# (segment name, blob, encoding, base digest) -> whatever the caller serves
Segment = tuple[str, bytes | bytearray | memoryview, str, str]


class Publisher:
    def __init__(self, codec: str) -> None:
        if codec not in DOWNLOAD:
            raise ConfigError(f"--download-codec {codec!r} is unknown; choose one of {', '.join(DOWNLOAD)}")
        self.codec = codec
        self._previous: dict[str, torch.Tensor] | None = None  # delta: the last version served, exactly
        self._previous_digest = ""

    def publish(self, live: dict[str, torch.Tensor], exact: frozenset[str] = frozenset()) -> list[Segment]:
        """Segments for this version of `live` (views of the global model), the full one first. May change `live`
        in place to what clients will decode. `exact`: buffers, sent as they are by every lossy codec."""
        if self.codec == "raw":
            return [("trainable", tensorcodec.encode(live), "raw", "")]
        if self.codec != "delta":
            codec = codecs.get(self.codec)
            blob = codec.encode(UpdateSource.of(live, exact), named=True) if isinstance(codec, Int8Codec) else codec.encode(UpdateSource.of(live, exact))
            _assign(live, codec.decode(bytes(blob), _specs(live)))
            return [("trainable", blob, self.codec, "")]
        segments: list[Segment] = []
        previous = self._previous
        if previous is not None and _specs(previous) == _specs(live):
            encoding = steps_encoding(live, previous, exact)
            steps = codecs.get(encoding).encode(UpdateSource(_specs(previous), steps_writer(live, previous), exact))
            _assign(live, apply_steps(previous, codecs.get(encoding).decode(bytes(steps), _specs(previous))))
            segments.append((DELTA_SEGMENT, steps, encoding, self._previous_digest))
        full = tensorcodec.encode(live)
        self._previous = {n: t.detach().cpu().clone() for n, t in live.items()}
        self._previous_digest = tensorcodec.sha256_hex(full)
        return [("trainable", full, "raw", ""), *segments]

    def forget(self) -> None:
        """The model was replaced (a checkpoint loaded): the next version goes out whole."""
        self._previous, self._previous_digest = None, ""


def steps_encoding(live: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], exact: frozenset[str]) -> str:
    """`topk:F` with F just enough for every entry that changed, when that is smaller than int8 (about 5 bytes a
    changed entry against 1 byte an entry); F is rounded up to the 1e-6 its name keeps, so nothing changed is left out."""
    moved = total = 0
    for name, tensor in live.items():
        if tensor.is_floating_point() and name not in exact:
            moved += int(torch.count_nonzero(tensor.detach().cpu() != previous[name]))
            total += tensor.numel()
    if not total or moved * 5 >= total:
        return "int8"
    return f"topk:{max(1e-6, math.ceil(moved / total * 1e6) / 1e6):g}"


def _specs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}


def _assign(live: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, target in live.items():
            target.copy_(values[name])
