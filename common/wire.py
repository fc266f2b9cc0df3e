"""Protobuf <-> domain records, and chunk-message streams. The only common module that imports protos.

Paired `*_to_proto` / `*_from_proto` functions keep protobuf types out of the logic. Model segments are serialised to
Chunk messages once per version (`serialize_blob`) and the same bytes are sent to every client that downloads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Any

from fedtl.common import chunks, wire_jobs, wire_secagg
from fedtl.common.config import (
    DataAssignment,
    Finished,
    Hello,
    ModelRecipe,
    SegmentRef,
    TrainConfig,
    TrainTask,
    UpdateHeader,
    UpdateKind,
    Welcome,
)
from fedtl.common.errors import ConfigError, CorruptError
from fedtl.common.framing import data_view, frame_data
from fedtl.common.jobs import JobOffer, SiteInstruction
from fedtl.common.metrics import FIELDS as METRIC_FIELDS
from fedtl.common.metrics import MAX_CUSTOM, ClientMetrics
from fedtl.common.secagg.messages import SecAggStep
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import tensors_pb2 as tpb

# ---------------------------------------------------------------- config records


def train_config_to_proto(c: TrainConfig) -> pb.TrainConfig:
    return pb.TrainConfig(**{f.name: getattr(c, f.name) for f in fields(TrainConfig)})


def train_config_from_proto(m: pb.TrainConfig) -> TrainConfig:
    """Field by field, by name; an empty string (a field an older server did not set) means the default."""
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        value = getattr(m, f.name)
        values[f.name] = f.default if value == "" else value
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise CorruptError(f"server sent an invalid training config: {exc}") from None


def data_to_proto(d: DataAssignment) -> pb.DataAssignment:
    return pb.DataAssignment(**{f.name: getattr(d, f.name) for f in fields(DataAssignment)})


def data_from_proto(m: pb.DataAssignment) -> DataAssignment:
    return DataAssignment(**{f.name: getattr(m, f.name) for f in fields(DataAssignment)})


def recipe_to_proto(r: ModelRecipe) -> pb.ModelRecipe:
    return pb.ModelRecipe(
        model=r.model, num_classes=r.num_classes, image_size=r.image_size, mean=list(r.mean), std=list(r.std),
        train_policy=r.train_policy, client_local=list(r.client_local), class_names=list(r.class_names),
    )


def recipe_from_proto(m: pb.ModelRecipe) -> ModelRecipe:
    return ModelRecipe(
        model=m.model, num_classes=m.num_classes, image_size=m.image_size, mean=tuple(m.mean), std=tuple(m.std),
        train_policy=m.train_policy or "all", client_local=tuple(m.client_local), class_names=tuple(m.class_names),
    )


# ---------------------------------------------------------------- session messages


# Every string a client sends is capped here, before anything keeps or logs it (docs/protocol.md).
LIMITS = {"protocol": 32, "client_name": 128, "hostname": 255, "device": 255, "torch_version": 64, "identity": 128,
          "session_id": 64, "sha256": 64, "base_digest": 64, "encoding": 32, "metric_name": 64, "segment_name": 32}


def _capped(what: str, value: str, limit_key: str | None = None) -> str:
    limit = LIMITS[limit_key or what]
    if len(value) > limit:
        raise CorruptError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    return value


def hello_to_proto(h: Hello) -> pb.Hello:
    return pb.Hello(
        protocol=h.protocol, client_name=h.client_name, partition_index=h.partition_index,
        partition_count=h.partition_count, identity=h.identity,
        info=pb.ClientInfo(hostname=h.hostname, device=h.device, torch_version=h.torch_version),
    )


def hello_from_proto(m: pb.Hello) -> Hello:
    return Hello(
        client_name=_capped("client_name", m.client_name), partition_index=m.partition_index, partition_count=m.partition_count,
        hostname=_capped("hostname", m.info.hostname), device=_capped("device", m.info.device),
        torch_version=_capped("torch_version", m.info.torch_version), protocol=_capped("protocol", m.protocol),
        identity=_capped("identity", m.identity),
    )


def download_from_proto(m: pb.DownloadRequest) -> tuple[str, str]:
    """(session id, segment digest) of a download request."""
    return _capped("session_id", m.session_id), _capped("sha256", m.sha256)


def instruction_to_proto(i: SiteInstruction) -> pb.Instruction:
    if isinstance(i, Welcome):
        welcome = pb.Welcome(session_id=i.session_id, run_id=i.run_id, recipe=recipe_to_proto(i.recipe))
        if i.data is not None:
            welcome.data.CopyFrom(data_to_proto(i.data))
        return pb.Instruction(welcome=welcome)
    if isinstance(i, TrainTask):
        return pb.Instruction(train=pb.TrainTask(
            round=i.round,
            segments=[pb.SegmentRef(name=s.name, sha256=s.sha256, total_bytes=s.total_bytes, encoding=s.encoding, base=s.base)
                      for s in i.segments],
            base_digest=i.base_digest, config=train_config_to_proto(i.config), data=data_to_proto(i.data),
            evaluate=i.evaluate, deadline_seconds=i.deadline_seconds, update_encoding=i.update_encoding,
            secagg=wire_secagg.setup_to_proto(i.secagg) if i.secagg else None,
            validated=wire_secagg.validated_to_proto(i.validated) if i.validated else None,
        ))
    if isinstance(i, SecAggStep):
        return pb.Instruction(secagg=wire_secagg.step_to_proto(i))
    if isinstance(i, Finished):
        return pb.Instruction(finished=pb.Finished(reason=i.reason, failed=i.failed, resume=i.resume, standing=i.standing))
    if isinstance(i, JobOffer):
        return pb.Instruction(offer=wire_jobs.offer_to_proto(i, data_to_proto(i.data) if i.data else None))
    raise TypeError(f"not an instruction: {i!r}")


def instruction_from_proto(m: pb.Instruction) -> SiteInstruction:
    kind = m.WhichOneof("kind")
    if kind == "welcome":
        w = m.welcome
        return Welcome(w.session_id, w.run_id, recipe_from_proto(w.recipe), data_from_proto(w.data) if w.HasField("data") else None)
    if kind == "train":
        t = m.train
        return TrainTask(
            round=t.round,
            segments=tuple(SegmentRef(_capped("segment name", s.name, "segment_name"), _capped("sha256", s.sha256), s.total_bytes,
                                      _capped("encoding", s.encoding) or "raw", _capped("base", s.base, "sha256")) for s in t.segments),
            base_digest=t.base_digest, config=train_config_from_proto(t.config), data=data_from_proto(t.data),
            evaluate=t.evaluate, deadline_seconds=t.deadline_seconds, update_encoding=t.update_encoding or "raw",
            secagg=wire_secagg.setup_from_proto(t.secagg) if t.HasField("secagg") else None,
            validated=wire_secagg.validated_from_proto(t.validated) if t.HasField("validated") else None,
        )
    if kind == "secagg":
        return wire_secagg.step_from_proto(m.secagg)
    if kind == "finished":
        return Finished(m.finished.reason, m.finished.failed, m.finished.resume, m.finished.standing)
    if kind == "offer":
        return wire_jobs.offer_from_proto(m.offer, data_from_proto(m.offer.data) if m.offer.HasField("data") else None)
    raise CorruptError(f"instruction carries no known kind ({kind!r}); is the client older than the server?")


# ---------------------------------------------------------------- blobs as chunk streams (framing: common/framing.py)


def serialize_blob(blob: bytes | bytearray | memoryview, chunk_bytes: int = chunks.DEFAULT_CHUNK_BYTES) -> tuple[chunks.Manifest, list[bytes]]:
    """Serialise a blob once into wire-ready Chunk messages: the manifest first, then the data slices."""
    manifest = chunks.manifest_of(blob)
    head = tpb.Chunk(manifest=tpb.BlobManifest(total_bytes=manifest.total_bytes, sha256=manifest.sha256))
    return manifest, [head.SerializeToString(), *(frame_data(piece) for piece in chunks.split(blob, chunk_bytes))]


def parse_chunk(raw: bytes) -> chunks.Manifest | memoryview:
    """Response deserializer for DownloadModel: a data view (fast path) or the manifest."""
    view = data_view(raw)
    if view is not None:
        return view
    message = tpb.Chunk.FromString(raw)
    kind = message.WhichOneof("part")
    if kind == "data":
        return memoryview(message.data)
    if kind == "manifest":
        return chunks.Manifest(message.manifest.total_bytes, message.manifest.sha256)
    raise CorruptError("a chunk message with neither manifest nor data")


def receive_blob(stream: Iterable[chunks.Manifest | memoryview | bytes | tpb.Chunk], expected: chunks.Manifest | None, max_bytes: int,
                 buffer: bytearray | None = None) -> memoryview:
    """Reassemble a downloaded chunk stream (parsed by parse_chunk, or raw) into `buffer` if given and big
    enough; the manifest must match `expected`."""
    it: Iterator = iter(stream)
    first = _part(next(it, None))
    if not isinstance(first, chunks.Manifest):
        raise CorruptError("blob stream did not start with a manifest")
    if expected is not None and first != expected:
        raise CorruptError(f"server offered blob {first.sha256[:16]}… ({first.total_bytes} B), expected {expected.sha256[:16]}…")
    assembler = chunks.BlobAssembler(first, max_bytes, buffer=buffer)
    for item in it:
        part = _part(item)
        if not isinstance(part, memoryview):
            raise CorruptError("a second manifest arrived in the middle of a blob stream")
        assembler.add(part)
    return assembler.finish()


def _part(item: object) -> chunks.Manifest | memoryview | None:
    if item is None or isinstance(item, (chunks.Manifest, memoryview)):
        return item
    if isinstance(item, tpb.Chunk):
        item = item.SerializeToString()
    return parse_chunk(item)  # type: ignore[arg-type]


def upload_messages(header: UpdateHeader, blob: bytes | bytearray | memoryview, chunk_bytes: int = chunks.UPLOAD_CHUNK_BYTES) -> Iterator[bytes]:
    """Serialised UploadMessages: the header, then the data slices (send with an identity serializer)."""
    yield pb.UploadMessage(header=header_to_proto(header)).SerializeToString()
    for piece in chunks.split(blob, chunk_bytes):
        yield frame_data(piece)


def parse_upload(raw: bytes) -> pb.UpdateHeader | memoryview:
    """Request deserializer for UploadUpdate: a data view (fast path) or the header."""
    view = data_view(raw)
    if view is not None:
        return view
    message = pb.UploadMessage.FromString(raw)
    kind = message.WhichOneof("part")
    if kind == "data":
        return memoryview(message.data)
    if kind == "header":
        return message.header
    raise CorruptError("an upload message with neither header nor data")


def header_to_proto(h: UpdateHeader) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        session_id=h.session_id, round=h.round, base_digest=h.base_digest, num_examples=h.num_examples,
        kind=h.kind.name, metrics=metrics_to_proto(h.metrics), encoding=h.encoding,
        manifest=tpb.BlobManifest(total_bytes=h.total_bytes, sha256=h.sha256),
    )


def header_from_proto(m: pb.UpdateHeader) -> UpdateHeader:
    if m.kind not in (k.value for k in UpdateKind):
        raise CorruptError(f"update kind {m.kind} is unknown")
    return UpdateHeader(
        session_id=_capped("session_id", m.session_id), round=m.round, base_digest=_capped("base_digest", m.base_digest),
        num_examples=m.num_examples, kind=UpdateKind(m.kind), total_bytes=m.manifest.total_bytes,
        sha256=_capped("sha256", m.manifest.sha256), metrics=metrics_from_proto(m.metrics), encoding=_capped("encoding", m.encoding) or "raw",
    )


def metrics_to_proto(metrics: ClientMetrics) -> pb.ClientMetrics:
    values = {name: value for name in METRIC_FIELDS if (value := getattr(metrics, name)) is not None}
    return pb.ClientMetrics(**values, custom=metrics.custom)


def metrics_from_proto(m: pb.ClientMetrics) -> ClientMetrics:
    if len(m.custom) > MAX_CUSTOM:
        raise CorruptError(f"an update reports {len(m.custom)} custom metrics; at most {MAX_CUSTOM} are accepted")
    custom = {_capped("metric name", key, "metric_name"): value for key, value in m.custom.items()}
    return ClientMetrics(**{name: getattr(m, name) for name in METRIC_FIELDS if m.HasField(name)}, custom=custom)
