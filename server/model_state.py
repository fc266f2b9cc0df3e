"""The global model as the wire sees it: a static segment (sent once, cached by digest) and a trainable one.

Static = tensors the server never changes (the frozen backbone under --train head, and the
BatchNorm layers under FedBN, which clients keep local). Trainable = what clients update and
the server aggregates. Each segment version is encoded and serialised to chunk messages once,
and every download of it shares those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtl.common import tensorcodec, wire
from fedtl.common.chunks import Manifest
from fedtl.common.config import SegmentRef, UpdateKind
from fedtl.common.models import Network, TrainPolicy, batchnorm_names, trainable_names
from fedtl.server.publishing import Publisher
from fedtl.server.validation import Expectation


@dataclass(frozen=True)
class PreparedSegment:
    name: str
    manifest: Manifest
    messages: list[bytes]  # serialised Chunk messages: manifest first
    encoding: str = "raw"  # the download codec the blob is in
    base: str = ""  # trainable-delta: the version it applies to

    @property
    def ref(self) -> SegmentRef:
        return SegmentRef(self.name, self.manifest.sha256, self.manifest.total_bytes, self.encoding, self.base)


class GlobalModel:
    def __init__(self, net: Network, policy: TrainPolicy, fedbn: bool, chunk_bytes: int, download_codec: str = "raw") -> None:
        self.net = net
        self.publisher = Publisher(download_codec)
        self.policy = policy
        self.first_trainable = policy.first_trainable(net)
        self.chunk_bytes = chunk_bytes
        self.state = net.module.state_dict()  # views of the live parameters and buffers
        local = batchnorm_names(net) if fedbn else set()
        trainable = [n for n in trainable_names(net, policy) if n not in local]
        self.trainable = trainable
        self.static = [n for n in self.state if n not in set(trainable)]
        param_names = {n for n, _ in net.module.named_parameters()}
        self.parameters = frozenset(n for n in trainable if n in param_names)
        self.client_local = ("batchnorm",) if fedbn else ()
        self._static: PreparedSegment | None = None

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {n: self.state[n] for n in names}

    def prepare_static(self) -> PreparedSegment | None:
        """The static segment never changes during a run, so it is prepared once."""
        if self._static is None and self.static:
            self._static = self._prepare("static", self.static)
        return self._static

    def prepare_trainable(self) -> list[PreparedSegment]:
        """This version's segments, the full one first; a lossy download codec makes the global model what it sends."""
        return [self._serialise(name, blob, encoding, base)
                for name, blob, encoding, base in self.publisher.publish(self.tensors(self.trainable),
                                                                         frozenset(self.trainable) - self.parameters)]

    def _prepare(self, name: str, names: list[str]) -> PreparedSegment:
        return self._serialise(name, tensorcodec.encode(self.tensors(names)))

    def _serialise(self, name: str, blob: bytes | bytearray | memoryview, encoding: str = "raw", base: str = "") -> PreparedSegment:
        manifest, messages = wire.serialize_blob(blob, self.chunk_bytes)
        return PreparedSegment(name, manifest, messages, encoding, base)

    def expectation(self, round_number: int, base_digest: str, kind: UpdateKind, max_examples: int, codec: str = "raw") -> Expectation:
        """Updates carry the same names, shapes and dtypes as the trainable segment, encoded by `codec`."""
        specs = {n: (self.state[n].dtype, tuple(self.state[n].shape)) for n in self.trainable}
        positive = {n: self.state[n].detach().clone() for n in self.trainable if n.endswith("running_var")}
        return Expectation(round_number, base_digest, kind, specs, self.parameters, max_examples, positive=positive,
                           encodings=frozenset({codec}))

    def full_state(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.state) - set(tensors)
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, target in self.state.items():
                target.copy_(tensors[name])
        self._static = None
        self.publisher.forget()
