"""Protobuf <-> domain records are lossless, and a blob stream is checked against what was announced."""

from __future__ import annotations

import pytest
import torch

from fedtl.common import chunks, framing, tensorcodec, wire
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
from fedtl.common.errors import CorruptError, DigestMismatch
from fedtl.common.metrics import ClientMetrics
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import tensors_pb2 as tpb


def test_instructions_round_trip() -> None:
    recipe = ModelRecipe("resnet18", 10, 64, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "blocks:2", ("batchnorm",))
    data = DataAssignment(2, 5, "dirichlet", 0.3, 2, 7, 0.1, 500)
    config = TrainConfig("fedavg", 2, 16, 0.05, 0.5, 1e-4, 0.01, 3, True, 9, "off", 1)
    task = TrainTask(4, (SegmentRef("static", "a" * 64, 10), SegmentRef("trainable", "b" * 64, 20)), "b" * 64, config, data, True, 30.0)
    for item in (Welcome("sid", "run", recipe, data), Welcome("sid", "run", recipe, None), task, Finished("done", True)):
        message = pb.Instruction.FromString(wire.instruction_to_proto(item).SerializeToString())
        back = wire.instruction_from_proto(message)
        if isinstance(item, Welcome):
            assert back.recipe.mean == pytest.approx(item.recipe.mean) and back.data == item.data
            assert back.recipe.model == item.recipe.model and back.recipe.client_local == item.recipe.client_local
        else:
            assert back == item


def test_hello_and_header_round_trip() -> None:
    hello = Hello("c1", 2, 4, "host", "cpu", "2.x")
    assert wire.hello_from_proto(pb.Hello.FromString(wire.hello_to_proto(hello).SerializeToString())) == hello
    header = UpdateHeader("sid", 3, "d" * 64, 128, UpdateKind.GRADIENT, 999, "e" * 64,
                          ClientMetrics(train_loss=0.5, steps=7, feature_cache=False, custom={"worst": 0.25}))
    assert wire.header_from_proto(pb.UpdateHeader.FromString(wire.header_to_proto(header).SerializeToString())) == header


def test_unknown_update_kind_and_empty_instruction_are_refused() -> None:
    with pytest.raises(CorruptError):
        wire.header_from_proto(pb.UpdateHeader(kind=7))
    with pytest.raises(CorruptError):
        wire.instruction_from_proto(pb.Instruction())


def _stream(blob: bytes, size: int = 7) -> list[tpb.Chunk]:
    _, messages = wire.serialize_blob(blob, size)
    return [tpb.Chunk.FromString(m) for m in messages]


def test_serialised_blob_reassembles_and_verifies() -> None:
    blob = bytes(tensorcodec.encode({"w": torch.randn(50)}))
    manifest = chunks.manifest_of(blob)
    assert wire.receive_blob(_stream(blob), manifest, len(blob)) == blob


def test_stream_must_match_the_announced_version() -> None:
    blob = b"x" * 30
    with pytest.raises(CorruptError):
        wire.receive_blob(_stream(blob), chunks.manifest_of(b"y" * 30), 30)
    stream = _stream(blob)
    stream[1] = tpb.Chunk(data=b"z" * len(stream[1].data))
    with pytest.raises(DigestMismatch):
        wire.receive_blob(stream, None, 30)
    with pytest.raises(CorruptError):
        wire.receive_blob(_stream(blob)[1:], None, 30)
    with pytest.raises(CorruptError):
        wire.receive_blob([*_stream(blob), _stream(blob)[0]], None, 30)


import hypothesis.strategies as st  # noqa: E402
from hypothesis import given, settings  # noqa: E402

from fedtl.common.errors import WireFormatError  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40).map(lambda b: tpb.Chunk(data=b)),
                          st.tuples(st.integers(0, 100), st.text("0123456789abcdef", min_size=0, max_size=70)).map(
                              lambda t: tpb.Chunk(manifest=tpb.BlobManifest(total_bytes=t[0], sha256=t[1]))),
                          st.just(tpb.Chunk())), max_size=8))
def test_fuzzed_chunk_streams_raise_only_wire_format_errors(stream) -> None:  # type: ignore[no-untyped-def]
    try:
        wire.receive_blob(stream, None, 100)
    except WireFormatError:
        pass


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16384, 1 << 20])
def test_hand_framed_data_messages_are_exactly_protobufs_bytes(size: int) -> None:
    piece = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = framing.frame_data(piece)
    assert framed == tpb.Chunk(data=piece).SerializeToString() == pb.UploadMessage(data=piece).SerializeToString()
    view = framing.data_view(framed)
    assert view is not None and bytes(view) == piece
    assert bytes(wire.parse_upload(framed)) == piece and bytes(wire.parse_chunk(framed)) == piece


def test_messages_that_are_not_a_single_data_field_take_the_protobuf_path() -> None:
    header = pb.UploadMessage(header=pb.UpdateHeader(round=3)).SerializeToString()
    assert framing.data_view(header) is None and wire.parse_upload(header).round == 3
    padded = framing.frame_data(b"abc") + b"\x18\x01"  # an extra unknown field: not the fast path
    assert framing.data_view(padded) is None and bytes(wire.parse_upload(padded)) == b"abc"
    assert framing.data_view(b"\x12\x05ab") is None  # length runs past the end
    manifest = tpb.Chunk(manifest=tpb.BlobManifest(total_bytes=9, sha256="a" * 64)).SerializeToString()
    assert wire.parse_chunk(manifest) == chunks.Manifest(9, "a" * 64)
    with pytest.raises(CorruptError):
        wire.parse_chunk(b"")


def test_every_training_setting_travels_by_name() -> None:
    """One source of truth: a TrainConfig field needs only a same-named field in pb.TrainConfig."""
    from dataclasses import fields

    proto_fields = pb.TrainConfig.DESCRIPTOR.fields_by_name
    for f in fields(TrainConfig):
        assert f.name in proto_fields, f"add `{f.name}` to TrainConfig in protos/federation.proto"
    changed = TrainConfig("fedavg", 3, 8, 0.2, 0.1, 0.0, 0.5, 7, True, 11, "on", 4)
    assert wire.train_config_from_proto(wire.train_config_to_proto(changed)) == changed
    older = wire.train_config_to_proto(changed)
    older.ClearField("feature_cache")  # a string an older server did not send means its default
    assert wire.train_config_from_proto(older).feature_cache == "auto"


def test_the_update_encoding_travels_in_task_and_header() -> None:
    header = UpdateHeader("sid", 3, "d" * 64, 128, UpdateKind.WEIGHT_DELTA, 999, "e" * 64, ClientMetrics(), "int8")
    assert wire.header_from_proto(pb.UpdateHeader.FromString(wire.header_to_proto(header).SerializeToString())).encoding == "int8"
    legacy = pb.UpdateHeader(session_id="s", round=1, kind=1)  # an older client sets no encoding: raw
    assert wire.header_from_proto(legacy).encoding == "raw"


def test_every_client_metric_travels_by_name_and_unset_ones_stay_unset() -> None:
    """A ClientMetrics field needs a same-named field in pb.ClientMetrics; what a client did not measure arrives as None."""
    from dataclasses import fields

    from fedtl.common.metrics import FIELDS

    proto_fields = pb.ClientMetrics.DESCRIPTOR.fields_by_name
    assert set(FIELDS) | {"custom"} == {f.name for f in fields(ClientMetrics)}
    for name in FIELDS:
        assert name in proto_fields, f"add `optional ... {name}` to ClientMetrics in protos/federation.proto"
    every = ClientMetrics(**{name: (True if name == "feature_cache" else 3 if name in ("steps", "eval_examples") else 0.5) for name in FIELDS},
                          custom={"own": 1.5})
    assert wire.metrics_from_proto(pb.ClientMetrics.FromString(wire.metrics_to_proto(every).SerializeToString())) == every
    assert wire.metrics_from_proto(pb.ClientMetrics()) == ClientMetrics()  # nothing measured: nothing invented (no zeros)
    too_many = pb.ClientMetrics(custom={f"m{i}": 1.0 for i in range(65)})
    with pytest.raises(CorruptError, match="at most 64"):
        wire.metrics_from_proto(too_many)


def test_numbers_from_the_operators_functions_fill_the_fields_they_name() -> None:
    metrics = ClientMetrics()
    metrics.merge({"eval_accuracy": 0.75, "worst_class_recall": 0.25, "steps": 4.0})
    assert metrics.eval_accuracy == 0.75 and metrics.steps == 4 and metrics.custom == {"worst_class_recall": 0.25}
    assert metrics.as_dict() == {"eval_accuracy": 0.75, "steps": 4.0, "worst_class_recall": 0.25}
