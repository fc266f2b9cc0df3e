"""The committed stubs are exactly what the pinned generator makes from the committed .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtl.protos.generate import GRPCIO_TOOLS_VERSION, PROTO_DIR, generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    try:
        from importlib.metadata import version

        installed = version("grpcio-tools")
    except Exception:  # noqa: BLE001
        installed = None
    if installed != GRPCIO_TOOLS_VERSION:
        pytest.fail(f"stubs are checked with grpcio-tools=={GRPCIO_TOOLS_VERSION}, found {installed}: "
                    f"pip install grpcio-tools=={GRPCIO_TOOLS_VERSION} (make install does)")
    fresh = generate(tmp_path)
    assert fresh, "generator produced nothing"
    for path in fresh:
        committed = PROTO_DIR / path.name
        assert committed.exists(), f"{path.name} is not committed: run make protos"
        assert committed.read_bytes() == path.read_bytes(), f"protos/{path.name} is stale: run make protos and commit"


def test_handwritten_handler_table_covers_the_service() -> None:
    """server/transport.py registers the methods by hand (to stream pre-serialised chunks); keep it in step."""
    from fedtl.protos import federation_pb2

    service = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    import fedtl.server.transport as transport
    handler = transport.federation_handler(type("S", (), {m.name: None for m in service.methods})())
    for method in service.methods:
        assert handler.service(type("D", (), {"method": f"/{service.full_name}/{method.name}"})()) is not None
