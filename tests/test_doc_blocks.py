"""Every code block in the README and docs/ runs as written, or is checked against what it names.

Shell blocks run in bash, in order, in one folder per document, with our programs (python, fedtl, make, docker, pip,
cp) replaced by a recorder of their words: what the shell expands (`$(cat certs/token)`, exported variables, env
prefixes) is expanded for real, and `python -m server.certs` runs for real (later lines read its files). Each
recorded command then meets the real thing without a federation's cost: a server, client or simulation command
line is parsed and checked by its own parser (files it names must exist, settings must agree), `--help` exits 0,
a make target exists, a `docker compose` line's settings render through `docker compose config`, a `--build-arg`
is an ARG of the Dockerfile. What these checks leave to other tests: a federation run as the README's first
command does (tests/test_local_federation.py), the Docker recipes on a real engine (tests/test_docker.py), and
`pip install` (needs the internet; tests/test_packaging.py builds and installs the wheel).

Python blocks run (the Python API's run() with two clients, then the README's load_trained on its model) or, for
the custom model, must be the example file's text; the architecture page's Strategy sketch names methods the real
class has; TOML and JSON blocks parse, the TOML one as the config of a server and of a client."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedtl.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LANGUAGES = {"bash", "python", "toml", "json", "text"}
COMPOSE_SETTINGS = sorted({v for f in ("docker-compose.yml", "docker-compose.standing.yml") for v in re.findall(r"\$\{(\w+)", (ROOT / f).read_text())})
RECORDER = r"""
_record() { python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[2:], "env": {k: os.environ[k] for k in sys.argv[1].split(",") if k in os.environ}}))' "$FEDTL_DOC_ENV" "$@" >> "$FEDTL_DOC_LOG"; }
python() {
  if [ "$1 $2" = "-m server.certs" ]; then shift 2; "$FEDTL_DOC_PYTHON" -m fedtl.server.certs "$@"; else _record python "$@"; fi
}
fedtl() { _record fedtl "$@"; }
make() { _record make "$@"; }
docker() { _record docker "$@"; }
pip() { _record pip "$@"; }
cp() { _record cp "$@"; }
"""


def blocks(language: str | None = None) -> Iterator[tuple[Path, str, str]]:
    for doc in DOCUMENTS:
        for match in BLOCK.finditer(doc.read_text()):
            if language is None or match.group(1) == language:
                yield doc, match.group(1), match.group(2)


def block(doc: str, language: str, containing: str) -> str:
    found = [text for path, _, text in blocks(language) if path.name == doc and containing in text]
    assert len(found) == 1, f"{doc}: {len(found)} {language} blocks contain {containing!r}"
    return found[0]


def recorded(doc: Path, folder: Path) -> list[dict]:
    """Run the document's shell blocks in `folder`, in order; the commands our recorder saw."""
    script = "\n".join(text for path, _, text in blocks("bash") if path == doc)
    for path, _, text in blocks("toml"):  # docs/api.md's config file, which its commands name fed.toml
        if path == doc:
            (folder / "fed.toml").write_text(text)
    log = folder / "commands.jsonl"
    env = {**os.environ, "FEDTL_DOC_LOG": str(log), "FEDTL_DOC_PYTHON": sys.executable, "FEDTL_DOC_ENV": ",".join(COMPOSE_SETTINGS),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fedtl, as from a checkout
    env.pop("FEDTL_TOKEN", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", RECORDER + script], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{doc.name}'s shell blocks failed:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def check_program(role: str, words: list[str], where: str) -> None:
    """`role` (server, client, simulation, certs) given `words`, checked by its own parser as the command would."""
    from fedtl.client.config import parse_args as client_args
    from fedtl.server.config import parse_args as server_args
    from fedtl.simulation.config import parse_simulation_args

    words = [w for w in words if w != "..."]  # "python -m server ... --dashboard 8080": the rest as elsewhere
    parse = {"server": server_args, "client": client_args, "simulation": parse_simulation_args, "simulate": parse_simulation_args}
    if role in ("server.helper", "helper"):  # its flags and values; what it checks at start needs its files
        from fedtl.server.helper.__main__ import build_parser

        build_parser().parse_args(words)
        return
    if role in ("submit", "ls", "logs", "stop"):  # an operator's commands: theirs, and a job's flags as the coordinator checks them
        from fedtl.server.standing import cli, terms

        own, job = (words[:words.index("--")], words[words.index("--") + 1:]) if "--" in words else (words, [])
        cli.parser_for(role).parse_args(own)
        try:
            server_args(terms.job_settings(job).flags, env={})
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")
        return
    if role == "certs":
        from fedtl.server import certs

        parser = certs.build_parser()
        if words == ["--help"]:
            with pytest.raises(SystemExit) as stop:
                parser.parse_args(words)
            assert stop.value.code == 0, where
        return
    assert role in parse, f"{where}: unknown program {role!r}"
    if "--help" in words or "--print-config" in words:  # they print, then exit 0
        with pytest.raises(SystemExit) as stop:
            parse[role](words, env={})
        assert stop.value.code == 0, where
        return
    try:
        parse[role](words, env={})
    except ConfigError as exc:
        pytest.fail(f"{where}: {exc}")


def check(command: dict, doc: Path, folder: Path) -> str:
    argv, where = command["argv"], f"{doc.name}: `{' '.join(command['argv'])[:140]}`"
    program, rest = argv[0], argv[1:]
    if program == "python":
        assert rest[0] == "-m", where
        check_program(rest[1], rest[2:], where)
    elif program == "fedtl":
        check_program(rest[0], rest[1:], where)
    elif program == "make":
        for target in rest:
            assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), f"{where}: no make target {target}"
    elif program == "docker" and rest[0] == "build":
        args = [rest[i + 1] for i, word in enumerate(rest) if word == "--build-arg"]
        dockerfile = (ROOT / "Dockerfile").read_text()
        for arg in args:
            assert re.search(rf"^ARG {arg.split('=')[0]}\b", dockerfile, re.M), f"{where}: the Dockerfile has no ARG {arg}"
    elif program == "docker" and rest[0] == "compose":
        compose = shutil.which("docker")
        if compose is None:
            return "docker compose: no docker CLI here"
        command_at = next(i for i, w in enumerate(rest[1:], 1) if not w.startswith("-") and rest[i - 1] != "-f")
        files = [w for i, w in enumerate(rest[:command_at]) if i and rest[i - 1] == "-f"] or ["docker-compose.yml"]
        env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SETTINGS} | command["env"]
        done = subprocess.run(["docker", "compose", *[x for f in files for x in ("-f", f)], "config", "-q"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{where}: docker compose config said {done.stderr[-1000:]}"
    elif program == "docker" and rest[0] == "run":  # a client in the image: its flags and values (its files are the container's)
        from fedtl.client.config import build_parser

        image = next(i for i, w in enumerate(rest) if w.startswith("fedtl:"))
        assert rest[image + 1] == "client", where
        build_parser().parse_args(rest[image + 2:])
        return "docker run: the client's files are the container's (tests/test_docker.py runs the recipe)"
    elif program in ("pip", "cp"):
        return f"{program}: not run (network, or a path of the reader's)"
    else:
        pytest.fail(f"{where}: no check for {program!r}")
    return ""


def test_every_fenced_block_says_its_language() -> None:
    for doc in DOCUMENTS:
        for match in BLOCK.finditer(doc.read_text()):
            assert match.group(1) in LANGUAGES, f"{doc.name}: a block without a language ({sorted(LANGUAGES)}): {match.group(2)[:80]!r}"


@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if "```bash" in d.read_text()], ids=lambda d: d.name)
def test_every_shell_command_in_a_document_is_accepted_as_written(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = recorded(doc, tmp_path)
    assert commands, f"{doc.name}: its shell blocks ran no command of ours"
    monkeypatch.chdir(tmp_path)  # relative paths (certs/server.pem) as the reader's shell would see them
    monkeypatch.syspath_prepend(str(ROOT))  # examples.custom_model, as from a checkout
    skipped = [reason for command in commands if (reason := check(command, doc, tmp_path))]
    print(f"\n[docs] {doc.name}: {len(commands)} commands checked; not run: {sorted(set(skipped))}")


def test_every_setting_given_to_docker_compose_is_one_it_reads() -> None:
    """compose ignores a variable it does not read: a misspelt TRAIN_PER_CLAS would be lost without a word."""
    for doc, _, text in blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            if "docker compose" in line:
                given = re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", line.split("docker compose", 1)[0])
                unknown = set(given) - set(COMPOSE_SETTINGS) - {"FEDTL_TOKEN"}
                assert not unknown, f"{doc.name}: `{line.strip()[:100]}` sets {sorted(unknown)}, which docker-compose.yml does not read"


def test_the_custom_model_block_is_the_example_file() -> None:
    text = block("api.md", "python", "def build(num_classes")
    assert text.strip() in (ROOT / "examples" / "custom_model.py").read_text(), "docs/api.md's model differs from examples/custom_model.py"


def test_the_strategy_sketch_names_methods_the_strategy_class_has() -> None:
    from fedtl.server.strategies.base import Strategy

    text = block("architecture.md", "python", "class Strategy")
    for name in re.findall(r"def (\w+)\(", text):
        assert callable(getattr(Strategy, name, None)), f"docs/architecture.md: Strategy has no {name}()"


def test_the_config_file_block_configures_a_server_and_its_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtl.client.config import parse_args as client_args
    from fedtl.server.config import parse_args as server_args

    path = tmp_path / "fed.toml"
    path.write_text(block("api.md", "toml", "[server"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    server = server_args(["--config", str(path)], env={})
    client = client_args(["--config", str(path)], env={})
    assert server.strategy.rule == "trimmed-mean" and server.upload_codec == "int8" and client.max_epsilon == 3.0


def test_json_blocks_parse() -> None:
    for _doc, _, text in blocks("json"):
        for line in text.splitlines():
            json.loads(line)


def test_the_python_api_block_runs_and_the_readme_loads_its_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's run() as written, with two clients; only the port is free instead of 50051 (tests run in
    parallel). Then the README's load_trained block on the model it made."""
    from inprocess_federation import InProcessFederation as Federation
    from test_examples import _image_folder

    import fedtl.api

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    _image_folder(tmp_path / "bugs", ["ant", "bee", "wasp"])
    real_run = fedtl.api.run
    monkeypatch.setattr(fedtl.api, "run", lambda *a, **kw: real_run(["--address", address], *a[1:], **kw))
    (tmp_path / "fed").mkdir()
    fed = Federation(tmp_path / "fed", [])
    try:
        clients = [fed.start_client(name, ["--data", "bugs", "--allow-plugin", "examples", "--max-wait", "120"], server=address)
                   for name in ("a", "b")]
        scope: dict = {}
        exec(compile(block("api.md", "python", "from fedtl.api import History, run"), "docs/api.md", "exec"), scope)
        assert all(client.wait(60) == 0 for client in clients)
    finally:
        fed.close()
    assert [r for r, _ in scope["history"].metric("test_accuracy")] == [0, 1, 2, 3]
    shutil.copytree(tmp_path / "runs" / "default", tmp_path / "runs" / "demo")  # the README's path
    readme: dict = {}
    exec(compile(block("README.md", "python", "load_trained"), "README.md", "exec"), readme)
    assert tuple(readme["info"].class_names) == ("ant", "bee", "wasp") and readme["model"].training is False
