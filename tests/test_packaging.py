"""The distribution claims only the `fedtl` name: the wheel holds fedtl/ and its metadata, nothing else, and a fresh
virtual environment with just that wheel (plus the dependencies) runs a whole federation through the `fedtl` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("server", "client", "common", "protos", "simulation")  # the repository's package folders, fedtl.<name> once installed


def test_the_package_list_names_every_package_folder_under_fedtl() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    on_disk = {"fedtl"} | {
        "fedtl." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOPS for init in (ROOT / top).rglob("__init__.py")
    }
    data_only = set(config["package-data"])  # folders of files, no Python: packages too, or setuptools warns on every build
    assert set(config["packages"]) == on_disk | data_only
    assert {k: v for k, v in mapping.items() if k != "fedtl"} == {f"fedtl.{d}": d for d in TOPS}


def test_a_checkout_imports_the_same_modules_by_the_fedtl_name() -> None:
    """fedtl/<name> links to the top-level folder, so static analysers and IDEs resolve `fedtl.server.x` as Python does."""
    from fedtl.common import tensorcodec
    from fedtl.server import config

    assert Path(tensorcodec.__file__).resolve().parent == ROOT / "common" and Path(config.__file__).resolve().parent == ROOT / "server"
    for top in TOPS:
        link = ROOT / "fedtl" / top
        assert link.is_symlink() and link.resolve() == ROOT / top, f"fedtl/{top} must be a link to ../{top}"


@pytest.mark.multiprocess  # what `python -m server.simulate` itself prints
def test_the_old_simulate_command_names_the_new_one() -> None:
    """The simulator moved above both sides (simulation/): the old spelling is one line that names the new one."""
    run = subprocess.run([sys.executable, "-m", "server.simulate", "--rounds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == ["error: the simulator moved: run `python -m simulation ...` (or `fedtl simulate ...`) "
                                               "with the same flags"]


def test_the_fedtl_command_lists_its_subcommands_and_refuses_unknown_ones() -> None:
    from fedtl.cli import main

    assert main([]) == 2 and main(["--help"]) == 0 and main(["nonsense"]) == 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_wheel_installs_alone_into_a_fresh_venv_and_runs_a_federation(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                           check=True, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert "BuildBackendWarning" not in built.stdout + built.stderr, "a clean build: no packaging warnings to read as breakage"
    [wheel] = list(wheels.glob("fedtl-*.whl"))
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert all(t == "fedtl" or (t.startswith("fedtl-") and t.endswith(".dist-info")) for t in tops), tops
    assert "fedtl/server/observe/static/index.html" in zipfile.ZipFile(wheel).namelist()

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, grpcio, ...) from this environment, without its editable checkout of fedtl
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--prefix", str(venv), str(wheel)], check=True, timeout=300)
    assert not any((site / name).exists() for name in TOPS)

    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    fedtl = str(venv / "bin" / "python"), str(venv / "bin" / "fedtl")  # the console script, run by the fresh interpreter
    where = subprocess.run([fedtl[0], "-c", "import fedtl.server, json; print(fedtl.server.__file__)"], check=True, cwd=tmp_path,
                           capture_output=True, text=True, env=env).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not this checkout
    run_dir = tmp_path / "run"
    server = subprocess.Popen([*fedtl, "server", "--address", "127.0.0.1:0", "--run-dir", str(run_dir), "--model", "tiny_cnn",
                               "--weights", "none", "--data", "synthetic:200", "--rounds", "2", "--min-clients", "2", "--join-grace", "1"],
                              cwd=tmp_path, env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    clients = []
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "server.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.2)
        port = json.loads((run_dir / "server.json").read_text())["port"]
        for name in ("a", "b"):
            clients.append(subprocess.Popen([*fedtl, "client", "--server", f"127.0.0.1:{port}", "--name", name, "--data", "synthetic:200",
                                             "--workdir", str(tmp_path / name), "--threads", "1", "--max-wait", "60"],
                                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        assert server.wait(180) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        for proc in [*clients, server]:
            if proc.poll() is None:
                proc.kill()
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2] and all(r.get("answered", 2) == 2 for r in records[1:])
