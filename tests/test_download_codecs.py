"""Download codecs (--download-codec): the coordinator's model becomes exactly what clients decode (no silent drift),
deltas rebuild the next version bit for bit and fall back to the whole version when they cannot, and real federations
train with each."""

from __future__ import annotations

import math

import pytest
import torch

from fedtl.client.segments import SegmentStore
from fedtl.common import tensorcodec
from fedtl.common.codecs.delta import DELTA_SEGMENT
from fedtl.common.config import SegmentRef
from fedtl.common.errors import ConfigError
from fedtl.server.publishing import Publisher


def _model(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(10, 64, generator=g), "fc.bias": torch.randn(10, generator=g),
            "bn.num_batches_tracked": torch.tensor(3, dtype=torch.int64)}


def _ref(segment: tuple) -> SegmentRef:
    name, blob, encoding, base = segment
    return SegmentRef(name, tensorcodec.sha256_hex(blob), len(blob), encoding, base)


def _specs(tensors: dict[str, torch.Tensor]) -> dict:
    return {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}


@pytest.mark.parametrize("codec, tolerance", [("fp16", 1e-3), ("bf16", 8e-3), ("int8", 1 / 127)])
def test_a_lossy_download_makes_the_coordinators_model_exactly_what_clients_decode(codec: str, tolerance: float) -> None:
    exact = _model()
    live = {n: t.clone() for n, t in exact.items()}
    [segment] = Publisher(codec).publish(live)
    store = SegmentStore(None)
    got, cached = store.fetch(_ref(segment), lambda ref, buf: bytearray(segment[1]), _specs(exact))
    assert not cached and all(torch.equal(got[n], live[n]) for n in live)  # the client decodes the coordinator's model
    assert all(got[n].dtype == exact[n].dtype for n in exact)
    assert float((live["fc.weight"] - exact["fc.weight"]).abs().max()) <= float(exact["fc.weight"].abs().max()) * tolerance * 2
    assert len(segment[1]) < len(tensorcodec.encode(exact)) * 0.6


def test_a_delta_rebuilds_the_next_version_bit_for_bit_and_moves_a_quarter_of_the_bytes() -> None:
    publisher, store = Publisher("delta"), SegmentStore(None)
    live = _model(0)
    first = publisher.publish(live)
    assert [s[0] for s in first] == ["trainable"]  # nothing to step from yet
    store.fetch(_ref(first[0]), lambda ref, buf: bytearray(first[0][1]), _specs(live))
    target = {n: (t + 0.01 * torch.randn_like(t) if t.is_floating_point() else t + 1) for n, t in live.items()}
    for n in live:
        live[n].copy_(target[n])
    full, delta = publisher.publish(live)
    assert delta[0] == DELTA_SEGMENT and delta[3] == tensorcodec.sha256_hex(first[0][1]) and delta[2] == "int8"
    downloaded = []
    rebuilt = store.fetch_delta(_ref(full), _ref(delta), lambda ref, buf: downloaded.append(ref.name) or bytearray(delta[1]))
    assert downloaded == [DELTA_SEGMENT] and rebuilt is not None
    assert tensorcodec.sha256_hex(tensorcodec.encode(rebuilt)) == _ref(full).sha256  # bit for bit what the coordinator serves
    assert all(torch.equal(rebuilt[n], live[n]) for n in live) and int(rebuilt["bn.num_batches_tracked"]) == 4
    step = float((target["fc.weight"] - first_weights(first)).abs().max()) / 127
    assert float((live["fc.weight"] - target["fc.weight"]).abs().max()) <= step * (1 + 2**-7)  # a bfloat16 scale rounded up
    assert len(delta[1]) < len(full[1]) / 2.5


def test_a_sparse_change_goes_down_exactly_as_every_changed_entry_in_a_fraction_of_int8s_bytes() -> None:
    """The mean of top-k uploads moves only the union of their supports: the delta sends exactly those entries."""
    publisher, store = Publisher("delta"), SegmentStore(None)
    big = {"w": torch.randn(300, 200, generator=torch.Generator().manual_seed(1)), "n": torch.tensor(3, dtype=torch.int64)}
    live = {n: t.clone() for n, t in big.items()}
    first = publisher.publish(live)
    store.fetch(_ref(first[0]), lambda ref, buf: bytearray(first[0][1]), _specs(live))
    moved = torch.randperm(60000, generator=torch.Generator().manual_seed(2))[:1500]  # 2.5 % of the entries
    target = live["w"].clone().reshape(-1)
    target[moved] += torch.randn(1500) * 1e-3
    live["w"].copy_(target.reshape(300, 200))
    full, delta = publisher.publish(live)
    assert delta[2].startswith("topk:")
    rebuilt = store.fetch_delta(_ref(full), _ref(delta), lambda ref, buf: bytearray(delta[1]))
    assert rebuilt is not None and tensorcodec.sha256_hex(tensorcodec.encode(rebuilt)) == _ref(full).sha256
    assert float((live["w"].reshape(-1) - target).abs().max()) <= float(target.abs().max()) * 2**-23  # exact but for float32 rounding
    int8_bytes = 60000 + 2 * 300
    assert len(delta[1]) < int8_bytes / 4 and len(delta[1]) < len(full[1]) / 30


def first_weights(segments: list) -> torch.Tensor:
    return tensorcodec.decode(bytearray(segments[0][1])).tensors["fc.weight"]


def test_a_client_without_the_base_or_with_another_version_downloads_the_whole_version() -> None:
    publisher = Publisher("delta")
    live = _model(0)
    publisher.publish(live)
    live["fc.weight"].add_(0.1)
    full, delta = publisher.publish(live)
    assert SegmentStore(None).fetch_delta(_ref(full), _ref(delta), lambda ref, buf: pytest.fail("nothing to add it to")) is None
    store = SegmentStore(None)
    other = tensorcodec.encode(_model(5))  # holds some version, but claims it is the base: the digest check catches it
    held = SegmentRef("trainable", _ref(delta).base, len(other))
    store._keep(held, dict(tensorcodec.decode(other).tensors))
    assert store.fetch_delta(_ref(full), _ref(delta), lambda ref, buf: bytearray(delta[1])) is None


def test_an_unknown_download_codec_is_refused_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedtl.server.config import parse_args

    assert parse_args(["--run-dir", str(tmp_path), "--data", "synthetic:60", "--download-codec", "delta"], env={}).download_codec == "delta"
    with pytest.raises(SystemExit):
        parse_args(["--run-dir", str(tmp_path), "--data", "synthetic:60", "--download-codec", "zip"], env={})
    with pytest.raises(ConfigError, match="--download-codec"):
        Publisher("zip")


@pytest.mark.parametrize("codec", ["delta", "fp16"])
def test_a_federation_downloading_with_a_codec_trains_from_and_checkpoints_the_same_model(tmp_path, codec: str) -> None:  # type: ignore[no-untyped-def]
    from inprocess_federation import InProcessFederation as Federation

    fed = Federation(tmp_path, ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:400", "--rounds", "3",
                                "--min-clients", "2", "--join-grace", "0", "--batch-size", "32", "--download-codec", codec, "--keep-round-models"])
    try:
        fed.start_server()
        for name in ("a", "b"):
            fed.start_client(name, ["--data", "synthetic:400"])
        assert fed.server.wait(120) == 0, fed.server.log[-3000:]
        logs = [fed.clients[n].log for n in ("a", "b")]
    finally:
        fed.close()
    records = [r for r in fed.rounds() if r["round"] > 0]
    assert all(r["answered"] == 2 and math.isfinite(r["test_loss"]) for r in records)  # every update named the served model
    if codec == "delta":
        assert all("(trainable-delta, int8)" in log for log in logs), logs[0][-2000:]
        assert records[-1]["bytes_down"] < records[0]["bytes_down"] / 2.5
    else:
        final = fed.model(3)
        weights = [t for n, t in final.items() if t.dtype == torch.float32 and "running_" not in n]  # buffers travel exactly
        assert weights and all(torch.equal(t, t.half().float()) for t in weights)
