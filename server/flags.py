"""The server's command line, assembled from the sections its features declare (common/sections.py): each flag, its
default and its help live with the feature it configures; server/config.py turns them into one checked ServerConfig."""

from __future__ import annotations

import argparse

from fedtl.common import config_file
from fedtl.common.cli import HelpFormatter, Parser, prog
from fedtl.common.sections import Section, assemble
from fedtl.server.observe import settings as observe
from fedtl.server.secagg import settings as secure_aggregation
from fedtl.server.settings import data, model, rounds, run, security, statistics, training, transport
from fedtl.server.standing import settings as standing
from fedtl.server.strategies import dp_settings as client_dp
from fedtl.server.strategies import settings as aggregation
from fedtl.server.validated import settings as validated


def sections() -> list[Section]:
    """The coordinator's sections, in --help order."""
    return [run.SECTION, model.SECTION, data.SECTION, rounds.SECTION, training.SECTION, statistics.SECTION, aggregation.SECTION,
            *aggregation.rule_sections(), secure_aggregation.SECTION, validated.SECTION, client_dp.SECTION, transport.SECTION, security.SECTION,
            observe.SECTION, standing.SECTION, config_file.SECTION]


def build_parser(name: str = "") -> argparse.ArgumentParser:
    parser = Parser(prog=name or prog("server", "server"), description="Coordinate a federated fine-tuning run.", formatter_class=HelpFormatter,
                                     allow_abbrev=False)
    return assemble(parser, sections())
