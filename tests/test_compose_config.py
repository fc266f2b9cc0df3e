"""The Docker files without Docker: compose files against the Compose Specification's schema, every service's
command through the real CLI parsers, the data preparation script, the certificate helper, the Dockerfile's shape.

docker/compose-spec.json is the schema embedded in the docker compose plugin that runs these files
(docker/extract_compose_schema.py copied it out), so this needs no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fedtl.client.config import build_parser as client_parser
from fedtl.client.config import parse_args as client_args
from fedtl.common.data import open_split
from fedtl.server import certs, healthcheck
from fedtl.server.config import build_parser as server_parser
from fedtl.server.config import parse_args as server_args
from scripts import prepare_data

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docker" / "compose-spec.json").read_text())
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR, $$."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise KeyError(f"${{{name}}} is required: {arg}")
            return arg
        return value or ""

    assert "${" not in VARIABLE.sub("", text), "nested ${...} defaults: this test's interpolation does not handle them"
    return VARIABLE.sub(one, text)


def load(path: Path, env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate(path.read_text(), env or {}))


def merged(env: dict[str, str] | None = None, *overrides: Path) -> dict:
    """The base file with override files applied as compose does for what these files use (maps merge, command replaces)."""
    doc = load(BASE, env)

    def merge(into: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for path in overrides:
        merge(doc, load(path, env))
    return doc


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_compose_files_validate_against_the_compose_specification(path: Path) -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load(path))]
    assert not errors, errors
    broken = load(path)
    next(iter(broken["services"].values()))["comand"] = ["typo"]
    assert list(validator.iter_errors(broken)), "the schema should reject an unknown service key"


def test_docker_compose_config_accepts_the_files_when_compose_is_installed() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose plugin on this machine (../shared/docker/engine.sh up installs it)")
    for files in (["-f", str(BASE)], ["-f", str(BASE), "-f", str(GPU)]):
        result = subprocess.run([docker, "compose", *files, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def _with_files(argv: list[str], tmp: Path) -> list[str]:
    """Container paths of files the parsers check (/certs/...) -> stand-ins under tmp (PEM-shaped: the parsers look)."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if eq and value.startswith("/certs/"):
            local = tmp / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            kind = "PRIVATE KEY" if local.suffix == ".key" else "CERTIFICATE"
            local.write_text(f"-----BEGIN {kind}-----\nstand-in\n-----END {kind}-----\n")
            arg = f"{flag}={local}"
        out.append(arg)
    return out


SETTINGS = [
    {},  # the defaults
    {"MODEL": "tiny_cnn", "WEIGHTS": "none", "DATA": "synthetic:600", "ROUNDS": "2", "IMAGE_SIZE": "0", "TRAIN": "all", "CLIENTS": "5"},
    {"DATA": "/import/cifar10-jpeg.tar.gz", "MODEL": "resnet18", "WEIGHTS": "/weights/resnet18-f37072fd.pth", "TRAIN_PER_CLASS": "500",
     "FEDTL_TOKEN": "t" * 32, "SERVER_NAMES": "fed.example.org,10.0.0.5", "PUBLISH": "50051", "CLIENT_DEVICE": "cuda"},
]


PARSERS = {
    "server": server_parser,
    "client": client_parser,
    "certs": certs.build_parser,
    "prepare-data": prepare_data.build_parser,
}


def _check_spelling(program: str, argv: list[str]) -> None:
    """Every flag spelled out in full: argparse would take an abbreviation, and then a renamed flag goes unnoticed."""
    known = PARSERS[program]()._option_string_actions
    for arg in argv:
        if arg.startswith("--"):
            assert arg.partition("=")[0] in known, f"{program}: {arg.partition('=')[0]} is not a flag of its parser"


@pytest.mark.parametrize("env", SETTINGS, ids=["defaults", "tiny", "cifar-resnet-open"])
def test_every_service_command_parses_with_the_real_cli(env: dict[str, str], tmp_path: Path) -> None:
    doc = merged(env, GPU)
    services = doc["services"]
    assert set(services) == {"certs", "data", "server", "client"}
    # one image for every role: the server service builds it, and nothing is pulled from a registry
    assert len({s["image"] for s in services.values()}) == 1
    assert [n for n, s in services.items() if "build" in s] == ["server"] and services["server"]["pull_policy"] == "build"
    assert all(s["pull_policy"] == "never" for n, s in services.items() if n != "server")
    parsed = {}
    for name, service in services.items():
        program, *argv = service["command"]
        if program in PARSERS:
            _check_spelling(program, argv)
        argv = _with_files(argv, tmp_path)
        if program == "server":
            parsed[name] = server_args(argv, env=service.get("environment") or {})
        elif program == "client":
            parsed[name] = client_args(argv, env=service.get("environment") or {})
        elif program == "certs":
            parsed[name] = certs.build_parser().parse_args(argv)
        elif program == "prepare-data":
            parsed[name] = prepare_data.build_parser().parse_args(argv)
        else:
            pytest.fail(f"service {name}: unknown program {program!r} (docker/entrypoint.sh knows server, client, certs, prepare-data)")
    server, client = parsed["server"], parsed["client"]
    # the server listens beyond loopback, so it must use TLS (or say --allow-insecure); clients verify it
    assert server.tls_cert is not None and client.ca_cert is not None
    assert server.token == (env.get("FEDTL_TOKEN") or None) and client.token == server.token
    # clients dial the server service on the port it listens on, and the certificate names it
    assert client.server == f"server:{server.address.rpartition(':')[2]}"
    assert "server" in parsed["certs"].server_name[0].split(",")
    # both read the prepared dataset from the data volume, which only the data service writes
    assert server.data == client.data == "/data/dataset" and parsed["data"].out == Path("/data")
    for name in ("server", "client"):
        assert "data:/data:ro" in services[name]["volumes"], name
    assert any(v.startswith("runs:") for v in services["server"]["volumes"])
    assert server.run_dir.parent == Path("/runs")
    # the server waits for all CLIENTS, and that is how many replicas start
    assert server.schedule.min_clients == int(env.get("CLIENTS", 3)) == services["client"]["deploy"]["replicas"]
    assert services["client"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["server"]["depends_on"]["data"]["condition"] == "service_completed_successfully"
    assert services["client"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_published_port_is_loopback_only_unless_asked() -> None:
    # free loopback ports (clones do not collide), for gRPC and for the dashboard
    assert load(BASE)["services"]["server"]["ports"] == ["127.0.0.1::50051", "127.0.0.1::8080"]
    assert load(BASE, {"PUBLISH": "50051"})["services"]["server"]["ports"] == ["50051:50051", "127.0.0.1::8080"]


def test_the_dashboard_in_compose_is_plain_http_behind_the_loopback_port_and_needs_its_token(tmp_path: Path) -> None:
    argv = _with_files(load(BASE)["services"]["server"]["command"][1:], tmp_path)
    args = server_args(argv, env={})
    assert args.observe.dashboard.host == "0.0.0.0" and args.observe.plain_http and args.observe.token_generated
    with_token = server_args(argv, env={"FEDTL_DASHBOARD_TOKEN": "t" * 24})
    assert with_token.observe.token == "t" * 24


def test_a_typo_in_a_flag_fails_the_parse() -> None:
    with pytest.raises(SystemExit):
        server_args(["--rounds=3", "--min-clinets=3"], env={})
    # argparse accepts abbreviations ("--min-client" for --min-clients); the exact-spelling check catches them
    with pytest.raises(AssertionError, match="--min-client"):
        _check_spelling("server", ["--min-client=3"])


def test_healthcheck_flags_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDTL_HEALTH_ADDRESS", "127.0.0.1:6000")
    monkeypatch.setenv("FEDTL_HEALTH_CA_CERT", "/certs/ca.pem")
    a = healthcheck.build_parser().parse_args([])
    assert a.address == "127.0.0.1:6000" and a.ca_cert == Path("/certs/ca.pem") and a.server_name is None
    monkeypatch.delenv("FEDTL_HEALTH_ADDRESS")
    monkeypatch.delenv("FEDTL_HEALTH_CA_CERT")
    a = healthcheck.build_parser().parse_args([])
    assert a.address == "127.0.0.1:50051" and a.ca_cert is None


def test_healthcheck_reports_an_unreachable_server() -> None:
    assert healthcheck.main(["--address", "127.0.0.1:1", "--timeout", "1"]) == 1


# ---------------------------------------------------------------- the Dockerfile and its context


def test_dockerfile_installs_pinned_dependencies_before_the_code_and_runs_unprivileged() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim" and not any(line.startswith("# syntax") for line in lines)
    first = {word: next(i for i, line in enumerate(lines) if line.startswith(word))
             for word in ("COPY requirements/runtime.txt", "COPY server/", "USER")}
    install = next(i for i, line in enumerate(lines) if "pip install -r /tmp/runtime.txt" in line)
    assert first["COPY requirements/runtime.txt"] < install < first["COPY server/"] < first["USER"]
    assert lines[first["USER"]] == "USER fedtl"
    assert any(line.startswith("ARG TORCH_INDEX_URL") for line in lines) and any(line.startswith("ARG PRETRAINED") for line in lines)
    # one image plays every role and only the server listens: its health check and port live in the compose file
    assert not any(line.startswith(("HEALTHCHECK", "EXPOSE")) for line in lines)
    server = load(BASE)["services"]["server"]
    assert server["healthcheck"]["test"] == ["CMD", "fedtl-healthcheck"] and server["expose"] == ["50051", "8080"]
    assert "healthcheck" not in load(BASE)["services"]["client"]
    assert any(line.startswith("ENTRYPOINT") and "tini" in line for line in lines)
    assert not any(re.search(r"\b(build-essential|gcc|g\+\+|python3-dev)\b", line) for line in lines)
    assert all(f"{pkg}==" in (ROOT / "requirements" / "runtime.txt").read_text() for pkg in ("torch", "torchvision", "grpcio"))


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", "allow-list: everything out, then the code back in"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set(re.findall(r"^COPY (\S+?)/? ", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied <= allowed, copied - allowed
    for heavy in (".venv", "runs", "tests", ".git", "docker/import", "docker/weights"):
        assert heavy not in allowed


def test_entrypoint_knows_every_program_compose_uses() -> None:
    text = (ROOT / "docker" / "entrypoint.sh").read_text()
    for word, module in (("server", "server"), ("client", "client"), ("prepare-data", "scripts.prepare_data"),
                         ("certs", "server.certs"), ("healthcheck", "server.healthcheck")):
        assert re.search(rf"(^|\|)\s*{re.escape(word)}\s*(\||\))", text, re.M), f"docker/entrypoint.sh has no case for {word}"
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module
    for path in ("entrypoint.sh", "healthcheck.sh"):
        assert os.access(ROOT / "docker" / path, os.X_OK), f"docker/{path} must be executable (the image runs it)"


# ---------------------------------------------------------------- scripts/prepare_data.py


def test_prepare_synthetic_writes_the_same_images_as_files(tmp_path: Path) -> None:
    target = prepare_data.prepare("synthetic:60", tmp_path)
    for split in ("train", "test"):
        files = open_split(str(target), split, tmp_path / "cache").load()
        memory = open_split("synthetic:60", split, tmp_path / "cache").load()
        assert files.classes == memory.classes and len(files) == len(memory)
        for label in range(10):  # same multiset of images per class (file order differs from generation order)
            a = files.images[files.labels == label].flatten(1)
            b = memory.images[memory.labels == label].flatten(1)
            assert torch.equal(a[a.sum(1).argsort()], b[b.sum(1).argsort()])
    stamp = (target / "train").stat().st_mtime_ns
    assert prepare_data.prepare("synthetic:60", tmp_path) == target and (target / "train").stat().st_mtime_ns == stamp  # no-op
    prepare_data.prepare("synthetic:40", tmp_path)  # another spec replaces it
    assert len(open_split(str(target), "train", tmp_path / "cache")) == 40
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepare-")]


def test_prepare_extracts_an_archive_of_an_image_folder(tmp_path: Path) -> None:
    tree = tmp_path / "src" / "mini"
    prepare_data.prepare("synthetic:20", tmp_path / "made")
    shutil.copytree(tmp_path / "made" / "dataset", tree)
    archive = tmp_path / "mini.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="mini")
    out = tmp_path / "volume"
    target = prepare_data.prepare(str(archive), out)
    assert sorted(p.name for p in target.iterdir()) == ["test", "train"]
    assert len(open_split(str(target), "train", tmp_path / "cache")) == 20
    assert json.loads((out / "dataset.json").read_text())["splits"]["test"]["classes"] == 10
    assert prepare_data.main(["--data", str(tmp_path / "missing.tar.gz"), "--out", str(out)]) == 2


@pytest.mark.parametrize("python_has_filters", [True, False], ids=["tarfile-filter", "older-python"])
def test_prepare_refuses_archive_members_that_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_has_filters: bool) -> None:
    if not python_has_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)  # as on Python < 3.11.4 (Debian 12's 3.11.2)
    good = tmp_path / "good.tar.gz"
    prepare_data.prepare("synthetic:20", tmp_path / "made")
    with tarfile.open(good, "w:gz") as tar:
        tar.add(tmp_path / "made" / "dataset", arcname="mini")
    assert len(open_split(str(prepare_data.prepare(str(good), tmp_path / "ok")), "test", tmp_path / "c")) == 100
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "made" / "dataset", arcname="mini")
        tar.add(tmp_path / "made" / "dataset.json", arcname="../escaped.json")
    assert prepare_data.main(["--data", str(evil), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "bad" / "dataset").exists()


# ---------------------------------------------------------------- server/certs.py


def test_certs_makes_a_ca_server_and_client_certificates_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pki"
    assert certs.main(["--out", str(out), "--server-name", "fed.example.org,10.0.0.5", "--client", "alice"]) == 0
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"fed.example.org", "localhost"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"10.0.0.5", "127.0.0.1"}
    x509.load_pem_x509_certificate((out / "client-alice.pem").read_bytes()).verify_directly_issued_by(ca)
    for key in ("ca.key", "server.key", "client-alice.key", "token", "tokens.txt"):
        assert (out / key).stat().st_mode & 0o077 == 0, f"{key} must be private"
    token = (out / "token").read_text().strip()
    assert len(token) >= 32 and not token.startswith("-") and token in capsys.readouterr().out
    # again with another client: same CA, same shared token, alice keeps her token
    alice = (out / "tokens.txt").read_text()
    assert certs.main(["--out", str(out), "--client", "bob"]) == 0
    assert (out / "ca.pem").read_bytes() == ca.public_bytes(Encoding.PEM)
    assert (out / "token").read_text().strip() == token
    assert (out / "tokens.txt").read_text().startswith(alice) and "bob " in (out / "tokens.txt").read_text()
    assert certs.main(["--out", str(tmp_path / "bad"), "--client", "has space"]) == 2


def test_preparing_the_same_synthetic_data_again_keeps_its_identity(tmp_path: Path) -> None:
    """The coordinator's checkpoint names its data by file sizes and times: generated files carry a fixed time, so a
    data service that prepares the same images again does not turn the run into another one (the next `up` resumed)."""
    from fedtl.common.data import open_split

    first = prepare_data.prepare("synthetic:40", tmp_path / "a")
    second = prepare_data.prepare("synthetic:40", tmp_path / "b")
    identity = [open_split(str(root), "test", tmp_path / "cache").identity for root in (first, second)]
    assert identity[0] and identity[0] == identity[1]
    times = {f.stat().st_mtime for root in (first, second) for f in root.rglob("*.png")}
    assert times == {prepare_data.SYNTHETIC_MTIME}, "the fixed time, not when the files were written"
