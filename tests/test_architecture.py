"""The dependency rule: common <- server/client, never server <-> client; grpc/protos only in four modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRANSPORT_MODULES = {"common/wire.py", "server/servicer.py", "server/transport.py", "server/healthcheck.py", "client/connection.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def test_import_direction() -> None:
    for path in _modules("common"):
        assert not _imports(path) & {"server", "client"}, f"{path.name}: common must not import server or client"
    for path in _modules("server"):
        assert "client" not in _imports(path), f"server/{path.name} imports client"
    for path in _modules("client"):
        assert "server" not in _imports(path), f"client/{path.name} imports server"


def test_only_transport_modules_touch_grpc_or_protos() -> None:
    for package in ("common", "server", "client"):
        for path in _modules(package):
            rel = f"{package}/{path.name}"
            if rel in TRANSPORT_MODULES:
                continue
            bad = _imports(path) & {"grpc", "protos", "grpc_health"}
            assert not bad, f"{rel} imports {bad}; only {sorted(TRANSPORT_MODULES)} may"


def test_nothing_unpickles() -> None:
    for package in ("common", "server", "client", "protos"):
        for path in _modules(package):
            text = path.read_text()
            assert "import pickle" not in text and "pickle.load" not in text, path
            for line in text.splitlines():
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f"{path}: {line.strip()}"
