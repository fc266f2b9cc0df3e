"""The README tells the truth about flags: every flag it shows exists, on the command it is shown with."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fedtl.client.config import build_parser as client_parser
from fedtl.server import certs, healthcheck
from fedtl.server.config import build_parser as server_parser
from fedtl.simulation.config import build_simulation_parser
from scripts.prepare_data import build_parser as prepare_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "deployment.md", ROOT / "docs" / "simulation.md"]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
DOCKER_CLI = {"--rm", "--scale", "--wait", "--add-host", "--network", "--name", "--detach", "--no-deps", "--build", "--volumes", "--build-arg",
              "--gpus", "--user"}  # docker's own


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


SERVER, CLIENT, SIMULATE = _flags(server_parser()), _flags(client_parser()), _flags(build_simulation_parser())
ANY = SERVER | CLIENT | SIMULATE | _flags(certs.build_parser()) | _flags(healthcheck.build_parser()) | _flags(prepare_parser()) | DOCKER_CLI | {"--help"}


def _commands(text: str) -> list[str]:
    """Shell commands in code blocks, with continuation lines joined."""
    commands, current = [], ""
    for line in text.splitlines():
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def test_every_flag_on_a_server_or_client_command_line_exists_there() -> None:
    for doc in DOCS:
        for command in _commands(doc.read_text()):
            if "python -m simulation " in command:
                wrong = set(FLAG.findall(command.split("python -m simulation", 1)[1])) - SIMULATE
                assert not wrong, f"{doc.name}: `{command[:120]}` uses {sorted(wrong)}, which python -m simulation does not have"
            elif "python -m server " in command and "server.certs" not in command:
                wrong = set(FLAG.findall(command.split("python -m server", 1)[1])) - SERVER
                assert not wrong, f"{doc.name}: `{command[:120]}` uses {sorted(wrong)}, which python -m server does not have"
            for marker in ("python -m client ", "fedtl:0.2.0 client "):
                if marker in command:
                    wrong = set(FLAG.findall(command.split(marker, 1)[1])) - CLIENT
                    assert not wrong, f"{doc.name}: `{command[:120]}` uses {sorted(wrong)}, which the client does not have"


def test_the_server_flag_table_lists_server_flags_and_every_other_flag_exists_somewhere() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("| Server flag | Meaning |", 1)[1].split("\n\n", 1)[0] if "| Server flag | Meaning |" in text else ""
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        wrong = set(FLAG.findall(first_cell)) - SERVER
        assert not wrong, f"README server flag table: {sorted(wrong)} are not server flags"
    for doc in DOCS:
        wrong = set(FLAG.findall(doc.read_text())) - ANY
        assert not wrong, f"{doc.name} mentions {sorted(wrong)}, which no command of this project has"
