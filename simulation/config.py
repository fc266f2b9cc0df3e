"""`python -m simulation` takes the coordinator's flags (the same names, the same checks) plus a few of its own."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace

from fedtl.common import config_file
from fedtl.common.cli import prog
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section, assemble
from fedtl.server.config import ServerConfig, from_namespace
from fedtl.server.flags import build_parser

BACKENDS = ("local", "process", "ray")  # where virtual clients train (simulation/backends.py)


@dataclass(frozen=True)
class SimulationConfig:
    server: ServerConfig
    virtual_clients: int
    backend: str
    workers: int  # process and ray backends: 0 = the cores (or the Ray cluster's CPUs)
    batch: int  # clients per backend task (0: the backend's default)
    ray_address: str | None
    vectorise: bool = True  # linear heads on cached features train together (False: one by one, to compare)
    effective_config: str = ""


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--virtual-clients", type=int, default=10, help="virtual clients, each with its own shard (--partition-scheme)")
    g.add_argument("--backend", choices=BACKENDS, default="local",
                   help="where clients train: local (this process; linear heads on cached features train together), process (a pool "
                        "of --workers processes: full fine-tuning) or ray (Ray tasks; --ray-address for a cluster)")
    g.add_argument("--workers", type=int, default=0, help="process/ray backends: worker processes (0: one per core)")
    g.add_argument("--clients-per-task", type=int, default=0, help="virtual clients per backend task (0: the backend's default)")
    g.add_argument("--vectorise", choices=("auto", "off"), default="auto",
                   help="auto: linear heads on cached features train together (exact); off: one client at a time (to compare)")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: a local one")


SECTION = Section("simulation", "simulation", add_flags)


def build_simulation_parser() -> argparse.ArgumentParser:
    p = build_parser(prog("simulate", "simulation"))
    p.description = ("Simulate a federation in one process: the coordinator's own rounds, strategies, codecs and privacy code, "
                     "with virtual clients instead of gRPC ones. Every coordinator flag applies.")
    return assemble(p, [SECTION])


def parse_simulation_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> SimulationConfig:
    env = dict(os.environ) if env is None else env
    return config_file.parse(build_simulation_parser(), argv, "simulate", lambda a: from_simulation_namespace(a, env))


def from_simulation_namespace(a: argparse.Namespace, env: dict[str, str]) -> SimulationConfig:
    if a.virtual_clients < 1:
        raise ConfigError(f"--virtual-clients must be >= 1, got {a.virtual_clients}")
    if a.workers < 0 or a.clients_per_task < 0:
        raise ConfigError("--workers and --clients-per-task must be >= 0")
    a.min_clients = a.virtual_clients  # every virtual client is there from the start
    a.max_clients = max(a.max_clients, a.virtual_clients) if a.max_clients else 0
    a.join_grace = 0.0
    server = from_namespace(a, env)
    _check_simulable(server)
    return SimulationConfig(server, a.virtual_clients, a.backend, a.workers, a.clients_per_task, a.ray_address, a.vectorise == "auto")


def _check_simulable(cfg: ServerConfig) -> None:
    """What needs real, separate clients is refused with what to do instead."""
    if cfg.strategy.secure is not None:
        raise ConfigError("--secure-aggregation hides each client's update from the coordinator; in one process there is no one to "
                          "hide it from, so the simulation does not run it. Simulate without it (the aggregate is the same), or run "
                          "real clients")
    if cfg.strategy.validated is not None:
        raise ConfigError("--helper checks each client's input with a second server; the simulation runs neither the helper nor the "
                          "clients' proofs. Simulate without it (valid inputs sum the same), or run real clients and a helper")
    if cfg.standing is not None:
        raise ConfigError("--standing keeps a coordinator up for real sites that stay connected between jobs; a simulation is one "
                          "run in one process. Simulate each job on its own, or run `fedtl server --standing` with real clients")
    if cfg.fedbn:
        raise ConfigError("--fedbn keeps BatchNorm statistics on each client; the simulation shares one network between virtual "
                          "clients, so it does not run it. Run real clients")


def with_effective(cfg: SimulationConfig) -> ServerConfig:
    """The server part, carrying the whole effective configuration (written into the run folder)."""
    return replace(cfg.server, effective_config=cfg.effective_config)
