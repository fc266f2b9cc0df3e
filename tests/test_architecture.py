"""The dependency rule: common <- server/client, never server <-> client; grpc/protos only in four modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRANSPORT_MODULES = {"common/wire.py", "common/wire_secagg.py", "server/servicer.py", "server/transport.py", "server/healthcheck.py", "client/connection.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_import_direction() -> None:
    for path in _modules("common"):
        assert not _imports(path) & {"server", "client"}, f"{_rel(path)}: common must not import server or client"
    for path in _modules("server"):
        assert "client" not in _imports(path), f"{_rel(path)} imports client"
    for path in _modules("client"):
        assert "server" not in _imports(path), f"{_rel(path)} imports server"


def test_only_transport_modules_touch_grpc_or_protos() -> None:
    for package in ("common", "server", "client"):
        for path in _modules(package):
            rel = _rel(path)
            if rel in TRANSPORT_MODULES:
                continue
            bad = _imports(path) & {"grpc", "protos", "grpc_health"}
            assert not bad, f"{rel} imports {bad}; only {sorted(TRANSPORT_MODULES)} may"


def test_nothing_unpickles() -> None:
    """No pickle.load anywhere; the one Unpickler (CIFAR-10's python batches) resolves an allowlist of names only."""
    for package in ("common", "server", "client", "protos"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "pickle.load" not in text, path
            if "Unpickler" in text:
                assert _rel(path) == "common/cifar.py" and "def find_class" in text and "_ALLOWED" in text, path
            for line in text.splitlines():
                if "torch.load(" in line or "load_state_dict_from_url(" in line:
                    assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_modules_stay_small() -> None:
    for package in ("common", "server", "client"):
        for path in _modules(package):
            lines = len(path.read_text().splitlines())
            assert lines <= 300, f"{_rel(path)} has {lines} lines: split it by responsibility"


def test_servicer_methods_only_translate() -> None:
    """Each RPC is check -> convert -> delegate -> convert: at most 15 lines."""
    tree = ast.parse((ROOT / "server" / "servicer.py").read_text())
    servicer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FederationServicer")
    rpcs = [n for n in servicer.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name[0].isupper()]
    from fedtl.protos import federation_pb2 as pb

    assert {n.name for n in rpcs} == {m.name for m in pb.DESCRIPTOR.services_by_name["Federation"].methods}
    for node in rpcs:
        assert node.end_lineno is not None and node.end_lineno - node.lineno + 1 <= 15, f"{node.name} is too long"


def test_every_registered_strategy_part_is_a_class_of_its_own_module() -> None:
    """Adding a rule or server optimizer is one module plus one line in server/strategies/__init__.py."""
    import importlib

    from fedtl.server.strategies import OPTIMIZERS, RULES
    from fedtl.server.strategies.base import Rule, ServerOptimizer

    for table, base in ((RULES, Rule), (OPTIMIZERS, ServerOptimizer)):
        for name, entry in table.items():
            module, _, cls = entry.path.partition(":")
            found = getattr(importlib.import_module(module), cls)
            assert issubclass(found, base) and found.name == name, entry
