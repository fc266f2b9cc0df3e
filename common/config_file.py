"""`--config FILE.toml`: the same settings as the flags, in a file; flags on the command line win.

Keys are the flags' names without the dashes (`min-clients` or `min_clients`). Top-level keys are for
every program that reads the file, each taking those it has (a key only the other side has is left to it; a
key no program has is an error); a `[server]` or `[client]` table holds keys for that program alone, so
one file can describe both sides of a federation, and within it each feature has a table of its own
(`[server.aggregation]`, `[server.trimmed-mean]`, `[client.privacy]`: common/sections.py), holding that
feature's flags only. The file becomes flag tokens placed before the command line's own, so argparse
applies the same types, choices and checks to both, and a flag given on the command line comes later
and wins. An unknown key is an error naming the closest valid one. --print-config writes the effective
configuration back in the same layout, table by table.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from fedtl.common.errors import ConfigError
from fedtl.common.program_flags import PROGRAM_FLAGS
from fedtl.common.sections import Section, tables

T = TypeVar("T")

SECRET_WORDS = ("token", "password", "secret")
TABLES = ("server", "client", "simulate")
INHERITS = {"simulate": ("server", "simulate")}  # a simulation reads the coordinator's table, then its own


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="settings with the flags' names as keys (flags given here win); see docs/api.md")
    g.add_argument("--print-config", action="store_true", help="print the effective configuration as TOML and exit")


SECTION = Section("config", "configuration file", add_flags)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, program: str, build: Callable[[argparse.Namespace], T]) -> T:
    """Flags after the file's settings, built into a config dataclass (with `effective_config`); --print-config prints
    the result and exits."""
    namespace = parser.parse_args(expand(parser, list(sys.argv[1:] if argv is None else argv), program))
    cfg = build(namespace)  # checked first: what is printed is a configuration that runs
    effective = render(parser, namespace, program)
    if namespace.print_config:
        print(effective, end="")
        raise SystemExit(0)
    return replace(cfg, effective_config=effective)  # type: ignore[type-var]


def expand(parser: argparse.ArgumentParser, argv: list[str], program: str) -> list[str]:
    """argv with the config file's settings turned into flags and put first."""
    path = _config_path(argv)
    if path is None:
        return argv
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: not readable TOML ({exc})") from None
    sections = tables(parser)
    settings = _flatten({k: v for k, v in data.items() if k not in TABLES}, sections, "", path)
    shared = set(settings)  # top-level: for every program that reads the file, each taking the keys it knows
    for table in INHERITS.get(program, (program,)):
        own = data.get(table, {})
        if not isinstance(own, dict):
            raise ConfigError(f"--config {path}: [{table}] must be a table of settings")
        settings.update(_flatten(own, sections, f"{table}.", path))
    actions = {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings and a.option_strings[0].startswith("--")}
    actions.update({s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")})
    tokens: list[str] = []
    for key, value in settings.items():
        name = key.replace("_", "-")
        if name in ("config", "print-config", "help"):
            raise ConfigError(f"--config {path}: {key!r} cannot be set in a config file")
        if name not in actions:
            if key in shared and _another_knows(name, program):
                continue  # a top-level key for the other side of the federation (a client's `allow-plugin`, a server's `rounds`)
            close = difflib.get_close_matches(name, sorted(actions), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--config {path}: unknown key {key!r} for the {program}{hint}")
        tokens += _tokens(actions[name], name, value, path)
    return [*tokens, *argv]


def _another_knows(name: str, program: str) -> bool:
    return any(name in flags for other, flags in PROGRAM_FLAGS.items() if other != program)


def render(parser: argparse.ArgumentParser, namespace: argparse.Namespace, program: str) -> str:
    """The effective configuration as TOML, a table per feature (flags' names as keys; secrets redacted, unset values as
    comments): read back with --config, it gives the same configuration."""
    sections = tables(parser)
    by_table: dict[str, list[str]] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config", "print_config"):
            continue
        name = action.option_strings[-1][2:] if action.option_strings[-1].startswith("--") else action.dest.replace("_", "-")
        value = getattr(namespace, action.dest, None)
        if value is None:
            line = f"# {name} = (not set)"
        elif any(word in name for word in SECRET_WORDS):
            line = f'{name} = "<redacted>"'
        else:
            line = f"{name} = {_toml(value)}"
        by_table.setdefault(sections.get(name, ""), []).append(line)
    blocks = [("\n".join(lines) if not table else f"[{program}.{table}]\n" + "\n".join(lines)) for table, lines in by_table.items()]
    return "\n\n".join(blocks) + "\n"


def _flatten(settings: dict[str, Any], sections: dict[str, str], where: str, path: Path) -> dict[str, Any]:
    """Keys of a table, with each feature's own table ([server.aggregation]) opened: its keys must be its flags."""
    out: dict[str, Any] = {}
    known = set(sections.values())
    for key, value in settings.items():
        table = key.replace("_", "-")
        if not (isinstance(value, dict) and table in known):
            out[key] = value
            continue
        own = sorted(name for name, section in sections.items() if section == table)
        for inner, setting in value.items():
            name = inner.replace("_", "-")
            if sections.get(name) != table:
                close = difflib.get_close_matches(name, own, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (its keys: {', '.join(own[:12])})"
                raise ConfigError(f"--config {path}: [{where}{table}] has no key {inner!r}{hint}")
            out[name] = setting
    return out


def _config_path(argv: list[str]) -> Path | None:
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if token.startswith("--config="):
            return Path(token.split("=", 1)[1])
    return None


def _tokens(action: argparse.Action, name: str, value: Any, path: Path) -> list[str]:
    flag = f"--{name}"
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise ConfigError(f"--config {path}: {name} is a switch; write {name} = true or false")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else f"--no-{name}"]
        wanted = action.const if value else action.default
        return [flag] if wanted != action.default else []
    if isinstance(value, dict):
        raise ConfigError(f"--config {path}: {name} takes a value, not a table")
    if isinstance(value, list):
        if action.nargs in ("*", "+") or isinstance(action.nargs, int):
            return [flag, *(_text(v) for v in value)]
        if isinstance(action, argparse._AppendAction):
            return [t for v in value for t in (flag, _text(v))]
        raise ConfigError(f"--config {path}: {name} takes one value, not a list")
    return [flag, _text(value)]


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML
