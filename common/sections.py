"""Flags owned by the features they configure.

A feature's module declares a `Section`: its --help group, its table in a TOML config file, and a function that adds
its flags. A program's parser is assembled from its sections in order (server/flags.py, client/config.py,
simulation/config.py); common/config_file.py reads `[<program>.<table>]` tables (keys: that section's flags) and
writes the effective configuration table by table, from the same declarations. Adding a flag is an edit to the
feature's own module; adding a feature is a module and a line in its program's list of sections.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_TABLES = "_fedtl_tables"  # where a parser keeps {flag name: table}


@dataclass(frozen=True)
class Section:
    table: str  # [server.<table>] in a config file, and the heading its settings are printed under
    title: str  # the --help group
    add: Callable[[argparse._ArgumentGroup], None]


def assemble(parser: argparse.ArgumentParser, sections: Iterable[Section]) -> argparse.ArgumentParser:
    """Add every section's flags, each in its own --help group, and remember which table each flag belongs to."""
    tables: dict[str, str] = getattr(parser, _TABLES, {})
    for section in sections:
        group = parser.add_argument_group(section.title)
        before = len(group._group_actions)
        section.add(group)
        for action in group._group_actions[before:]:
            if action.type is float:  # nan and inf parse as floats; no flag means either, and nan passes every `<` check
                action.type = finite_float
            for option in action.option_strings:
                if option.startswith("--"):
                    tables[option[2:]] = section.table
    setattr(parser, _TABLES, tables)
    return parser


def finite_float(text: str) -> float:
    """argparse's type for every float flag: a finite number, or one line saying so (exit 2, before anything runs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


def tables(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{flag name without dashes: its section's table} for every flag added through `assemble`."""
    return dict(getattr(parser, _TABLES, {}))
