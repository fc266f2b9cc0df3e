"""A model larger than 64 MiB (ResNet-50, ~94 MB) streams both ways under gRPC's default 4 MiB message cap."""

from __future__ import annotations

from pathlib import Path

import torch
from harness import audited_updates

from fedtl.client.connection import CHANNEL_OPTIONS
from fedtl.server.transport import SERVER_OPTIONS


def test_no_message_size_limit_is_raised() -> None:
    for key, _ in [*SERVER_OPTIONS, *CHANNEL_OPTIONS]:
        assert "max_receive_message_length" not in key and "max_send_message_length" not in key


def test_resnet50_streams_through_default_grpc_limits(inprocess_federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = inprocess_federation(["--model", "resnet50", "--weights", "none", "--data", "synthetic:40", "--rounds", "1",
                      "--min-clients", "2", "--max-steps", "1", "--batch-size", "4", "--eval-every", "0",
                      "--join-grace", "0", "--keep-round-models", "--finish-grace", "5", "--norm-quantile", "0"])  # the exact mean
    fed.start_server()
    for i in range(2):
        fed.start_client(f"big{i}", ["--data", "synthetic:40", "--audit-dir", str(tmp_path / "audit")])
    assert fed.server.wait(300) == 0, fed.server.log[-3000:]
    record = fed.rounds()[-1]
    model_bytes = sum(t.numel() * t.element_size() for t in fed.model(0).values())
    assert model_bytes > 64 * 2**20
    assert record["bytes_down"] >= 2 * model_bytes and record["bytes_up"] >= 2 * model_bytes
    updates = audited_updates(tmp_path / "audit", 1)
    w0, w1 = fed.model(0), fed.model(1)
    total = sum(n for _, n, _ in updates)
    name = "layer4.2.conv3.weight"
    expected = w0[name].double() + sum(u[name].double() * n for u, n, _ in updates) / total
    assert torch.allclose(w1[name].double(), expected, atol=1e-6)
