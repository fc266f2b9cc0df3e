"""docs/flags.md is what the parsers say: regenerated in process and compared, every flag in it under its program,
and the same text on any machine (no home folder or host name in a default)."""

from __future__ import annotations

import argparse
import logging
import re
import socket
from pathlib import Path

import pytest

from fedtl.client.config import build_parser as client_parser
from fedtl.server.flags import build_parser as server_parser
from fedtl.simulation.config import build_simulation_parser
from scripts import flags_doc

STALE = "docs/flags.md is stale: run python -m scripts.flags_doc"
ROW_FLAGS = re.compile(r"^\| `(--[a-z0-9-]+)", re.M)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--") and o != "--help"}


def _sections(text: str) -> dict[str, str]:
    """{'server': its part of the doc, 'client': ..., 'simulation': ...}"""
    parts = re.split(r"^## `python -m (\w+)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_docs_flags_md_is_what_the_parsers_say() -> None:
    assert flags_doc.DOC.read_text(encoding="utf-8") == flags_doc.render(), STALE


def test_the_program_flag_names_config_files_read_are_what_the_parsers_say() -> None:
    assert flags_doc.NAMES.read_text(encoding="utf-8") == flags_doc.flag_names(), "run python -m scripts.flags_doc"


def test_every_flag_is_listed_once_under_its_program() -> None:
    sections = _sections(flags_doc.DOC.read_text(encoding="utf-8"))
    server, client, simulation = _flags(server_parser()), _flags(client_parser()), _flags(build_simulation_parser())
    expected = {"server": server, "client": client, "simulation": simulation - server}
    assert sorted(sections) == sorted(expected)
    for program, flags in expected.items():
        listed = ROW_FLAGS.findall(sections[program])
        assert sorted(listed) == sorted(flags), f"python -m {program}: {sorted(set(flags) ^ set(listed))}"
    assert "every flag of `python -m server`" in sections["simulation"]


def test_the_doc_reads_the_same_for_another_user_on_another_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert "| `~/.cache/fedtl` |" in flags_doc.render()  # --data-cache, under the home folder
    monkeypatch.setenv("HOME", str(tmp_path / "someone-else"))
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    assert flags_doc.render() == flags_doc.DOC.read_text(encoding="utf-8"), STALE


def test_a_default_that_is_a_path_on_this_machine_stops_the_generator() -> None:
    action = argparse.ArgumentParser().add_argument("--cache", default=Path("/var/cache/fedtl"))
    with pytest.raises(ValueError, match="--cache: default '/var/cache/fedtl' is a path on this machine"):
        flags_doc._default(action)


def test_check_exits_1_with_one_line_when_stale_and_0_when_fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    doc = tmp_path / "flags.md"
    monkeypatch.setattr(flags_doc, "DOC", doc)
    doc.write_text(flags_doc.render().replace("checkpoints and round logs go here", "an old help text"), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="flags_doc"):
        assert flags_doc.main(["--check"]) == 1
    assert [(r.levelname, "\n" in r.getMessage(), "is stale" in r.getMessage()) for r in caplog.records] == [("ERROR", False, True)]
    assert flags_doc.main([]) == 0 and flags_doc.main(["--check"]) == 0
    assert doc.read_text(encoding="utf-8") == flags_doc.render()
