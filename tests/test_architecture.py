"""The dependency rule, read from every import of every module (in functions and TYPE_CHECKING blocks too, relative
imports resolved, and module names written as strings for importlib): `protos` imports nothing of ours; `common` imports
neither side; `server` and `client` never import each other; `simulation`, above both, may import either. grpc and
protos only in the transport modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRANSPORT_MODULES = {"common/wire.py", "common/wire_secagg.py", "server/servicer.py", "server/transport.py", "server/healthcheck.py",
                     "client/connection.py", "server/helper/service.py", "server/validated/link.py",
                     "common/wire_jobs.py", "server/standing/service.py", "server/standing/cli.py"}
PACKAGES = ("protos", "common", "server", "client", "simulation")
MAY_IMPORT = {  # each package's own fedtl.* neighbours (itself is always allowed)
    "protos": set(),
    "common": {"protos"},
    "server": {"common", "protos"},
    "client": {"common", "protos"},
    "simulation": {"common", "protos", "server", "client"},
}
DYNAMIC = re.compile(r"^fedtl\.(\w+)[.:]")  # "fedtl.server.strategies.mean:Mean" for importlib


def _package_of(path: Path) -> str:
    return ".".join(("fedtl", *path.relative_to(ROOT).with_suffix("").parts[:-1]))


def _imports(path: Path) -> set[str]:
    """Every fedtl.<package> this file names in an import, resolved (relative ones included), or as an importlib string."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path).split(".")
                base = base[: len(base) - (node.level - 1)]
                names = [".".join([*base, *([node.module] if node.module else [])])]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (match := DYNAMIC.match(node.value)):
            names = [f"fedtl.{match.group(1)}"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fedtl" and len(parts) > 1 and parts[1] in PACKAGES:
                found.add(parts[1])
            elif parts[0] in PACKAGES:  # a bare `import server...` would work only in a checkout: counts the same
                found.add(parts[0])
    return found


def _imports_of_grpc(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            found.add(parts[1] if parts[0] == "fedtl" and len(parts) > 1 else parts[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_import_direction() -> None:
    broken = [f"{_rel(path)} imports fedtl.{', fedtl.'.join(sorted(bad))}"
              for package in PACKAGES for path in _modules(package)
              if (bad := _imports(path) - MAY_IMPORT[package] - {package})]
    assert not broken, "\n".join(broken)


def test_the_import_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: absolute, relative, lazy and importlib-string imports of the other side are all caught."""
    (tmp_path / "server").mkdir()
    sample = tmp_path / "server" / "sample.py"
    sample.write_text("from fedtl.client.runtime import x\nfrom ..client import y\ndef f():\n    import fedtl.simulation.app\n"
                      "TABLE = {'a': 'fedtl.client.mods:Audit'}\nfrom fedtl.common import z\nfrom .rounds import r\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _imports(sample) == {"client", "simulation", "common", "server"}
    finally:
        ROOT = saved


def test_only_transport_modules_touch_grpc_or_protos() -> None:
    for package in ("common", "server", "client"):
        for path in _modules(package):
            rel = _rel(path)
            if rel in TRANSPORT_MODULES:
                continue
            bad = _imports_of_grpc(path) & {"grpc", "protos", "grpc_health"}
            assert not bad, f"{rel} imports {bad}; only {sorted(TRANSPORT_MODULES)} may"


def test_nothing_unpickles() -> None:
    """No pickle.load anywhere; the one Unpickler (CIFAR-10's python batches) resolves an allowlist of names only."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "pickle.load" not in text, path
            if "Unpickler" in text:
                assert _rel(path) == "common/cifar.py" and "def find_class" in text and "_ALLOWED" in text, path
            for line in text.splitlines():
                if "torch.load(" in line or "load_state_dict_from_url(" in line:
                    assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_modules_stay_small() -> None:
    for package in ("common", "server", "client", "simulation"):
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
