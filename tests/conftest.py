from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402
from harness import Federation  # noqa: E402
from inprocess_federation import InProcessFederation  # noqa: E402

CIFAR_JPEG = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator:
    """Factory: federation(server_args) -> Federation of real processes, torn down (every process killed) after the test."""
    made: list[Federation] = []

    def make(server_args: list[str]) -> Federation:
        fed = Federation(tmp_path, server_args)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()


@pytest.fixture
def inprocess_federation(tmp_path: Path) -> Iterator:
    """Factory: inprocess_federation(server_args) -> InProcessFederation (server and clients in threads of this
    process, real gRPC on 127.0.0.1), torn down after the test."""
    made: list[InProcessFederation] = []

    def make(server_args: list[str], folder: Path | None = None) -> InProcessFederation:
        fed = InProcessFederation(folder or tmp_path, server_args)
        made.append(fed)
        return fed

    yield make
    for fed in reversed(made):
        fed.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules whose tests take longest first (docker, slow, multiprocess, the rest), each module's tests together in
    their own order: under -n the long chains start at once and the short tests fill in at the end."""

    def kind(item: pytest.Item) -> int:
        return next((rank for rank, name in enumerate(("docker", "slow", "multiprocess")) if item.get_closest_marker(name)), 3)

    module_rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_rank[module] = min(module_rank.get(module, 3), kind(item))
    items.sort(key=lambda item: module_rank[item.nodeid.split("::")[0]])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that starts processes through tests/harness.py must say so (-m "not multiprocess" is the fast tier):
    for a test without the marker, the harness refuses to start one."""
    harness.PROCESSES_ALLOWED = item.get_closest_marker("multiprocess") is not None


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    """The shared CIFAR-10 JPEG archive; tests that need real images skip without it."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"real CIFAR-10 images not found at {CIFAR_JPEG}")
    return CIFAR_JPEG

