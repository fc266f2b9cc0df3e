"""`fedtl client` flags -> one frozen ClientConfig. Training hyperparameters come from the server."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from fedtl.client.mods import audit, pacing, policy, privacy
from fedtl.client.mods import validated_flags as validated
from fedtl.client.mods.policy import SitePolicy
from fedtl.common import config_file
from fedtl.common.chunks import DEFAULT_CHUNK_BYTES, UPLOAD_CHUNK_BYTES
from fedtl.common.cli import HelpFormatter, Parser, check_file, check_folder, prog
from fedtl.common.config import client_name_problem, parse_partition
from fedtl.common.devices import check_device_text
from fedtl.common.errors import ConfigError
from fedtl.common.logs import FORMATS, LEVELS
from fedtl.common.sections import Section, assemble


@dataclass(frozen=True)
class ClientConfig:
    server: str
    name: str
    data: str
    data_cache: Path
    workdir: Path
    partition_index: int
    partition_count: int
    device: str
    amp: str
    threads: int
    ca_cert: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_server_name: str | None
    token: str | None
    compression: str
    chunk_bytes: int
    max_wait: float
    first_wait: float  # --max-wait before this client ever joined (a wrong address, a server never started)
    audit_dir: Path | None
    log_level: str
    log_format: str = "text"
    max_epsilon: float = 0.0
    min_client_dp_noise: float = 0.0
    dp_delta: float = 1e-5  # the data owner's δ: --max-epsilon holds at it
    simulate_link: tuple[float, float] | None = None  # (up, down) bit/s: pace this client's transfers (benchmarks)
    effective_config: str = ""  # the flags and config file as TOML
    allow_plugins: tuple[str, ...] = ()  # modules the coordinator may name as the model (their code runs here)
    helper: str = ""  # the helper this site trusts (two-server validated aggregation); "": such rounds are refused
    helper_ca_cert: Path | None = None
    policy: SitePolicy = SitePolicy()  # what this site's data may be used for (client/mods/policy.py)


MAX_WAIT = 600.0  # seconds unreachable before a client that has joined gives up (a coordinator restart takes less)
FIRST_WAIT = 180.0  # before it ever joined: long enough for a server still loading its data, short for a wrong address


def _federation(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of the server")
    g.add_argument("--name", default=None, help="stable client name (default: the host name); a restarted client keeps its partition")
    g.add_argument("--token", default=None, help="token the server expects (or FEDTL_TOKEN)")
    g.add_argument("--partition", default="auto", help="auto (the server assigns a shard), none (all local data) or i/N")
    g.add_argument("--max-wait", type=float, default=None,
                   help="give up (exit 4) once the server has been unreachable this long (0: keep trying; default: 600 s once "
                        "this client has joined, 180 s for a server that never answered: a wrong address fails in minutes)")


def _data(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default="cifar10", help="cifar10[:ROOT], synthetic[:N], an ImageFolder dir with train/, or a .tar.gz of one")
    g.add_argument("--data-cache", type=Path, default=Path.home() / ".cache" / "fedtl", help="downloads and extracted archives")
    g.add_argument("--workdir", type=Path, default=None, help="cached model segments and features (default: DATA_CACHE/clients/NAME)")
    g.add_argument("--allow-plugin", action="append", default=[], metavar="MODULE",
                   help="let the coordinator's --model name code from MODULE (and its submodules), which this client then "
                   "imports and runs; review it first (repeatable)")


def _compute(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="mixed precision on CUDA (auto: on for CUDA)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def _tls(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--ca-cert", type=Path, default=None, help="CA certificate to verify the server (enables TLS)")
    g.add_argument("--tls-cert", type=Path, default=None, help="client certificate for mutual TLS")
    g.add_argument("--tls-key", type=Path, default=None, help="the client certificate's private key")
    g.add_argument("--tls-server-name", default=None, help="expected name in the server certificate (default: the host in --server)")


def _transport(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--compression", choices=("none", "gzip"), default="none", help="gzip for slow links")
    g.add_argument("--chunk-bytes", type=int, default=UPLOAD_CHUNK_BYTES, help=f"bytes per uploaded chunk (<= {DEFAULT_CHUNK_BYTES})")
    g.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS, help="how much the client logs")
    g.add_argument("--log-format", default="text", choices=FORMATS, help="text lines, or json: one object a line")


# The client's sections, in --help order; its mods (client/mods/) declare their own.
SECTIONS = (Section("federation", "federation", _federation), Section("data", "data", _data), privacy.SECTION, policy.SECTION,
            Section("compute", "compute", _compute), Section("tls", "TLS", _tls),
            Section("transport", "transport and logging", _transport), validated.SECTION, pacing.SECTION, audit.SECTION,
            config_file.SECTION)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog("client", "client"), description="Join a federation and fine-tune on local data.",
                                formatter_class=HelpFormatter, allow_abbrev=False)
    return assemble(p, SECTIONS)


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ClientConfig:
    """Flags, after the settings of --config FILE.toml (the flags win); --print-config prints the result and exits."""
    env = dict(os.environ) if env is None else env
    return config_file.parse(build_parser(), argv, "client", lambda namespace: from_namespace(namespace, env))


def from_namespace(a: argparse.Namespace, env: dict[str, str]) -> ClientConfig:
    if "://" in a.server:
        raise ConfigError(f"--server {a.server!r}: give HOST:PORT without a scheme, e.g. {a.server.split('://', 1)[1].rstrip('/')}")
    host, sep, port = a.server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"--server {a.server!r}: use HOST:PORT, e.g. 10.0.0.5:50051")
    index, count = parse_partition(a.partition)
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if a.tls_cert is not None and a.ca_cert is None:
        raise ConfigError("--tls-cert (mutual TLS) needs --ca-cert to verify the server too")
    check_file("--ca-cert", a.ca_cert, "CERTIFICATE")
    check_file("--tls-cert", a.tls_cert, "CERTIFICATE")
    check_file("--tls-key", a.tls_key, "PRIVATE KEY")
    for flag, folder in (("--data-cache", a.data_cache), ("--workdir", a.workdir)):
        check_folder(flag, folder)
    if not 0 < a.chunk_bytes <= DEFAULT_CHUNK_BYTES:
        raise ConfigError(f"--chunk-bytes must be in 1..{DEFAULT_CHUNK_BYTES}")
    check_device_text(a.device)
    max_wait, first_wait = (MAX_WAIT, FIRST_WAIT) if a.max_wait is None else (a.max_wait, a.max_wait)
    if a.threads < 0 or not max_wait >= 0:
        raise ConfigError("--threads and --max-wait must be >= 0")
    max_epsilon, min_noise, delta = privacy.limits(a)
    helper, helper_ca = validated.helper_of(a)
    check_file("--helper-ca-cert", a.helper_ca_cert, "CERTIFICATE")
    name = a.name or socket.gethostname()
    problem = client_name_problem(name)
    if problem:
        raise ConfigError(f"--name: {problem}")
    workdir = a.workdir or a.data_cache / "clients" / name
    return ClientConfig(
        server=a.server, name=name, data=a.data, data_cache=a.data_cache, workdir=workdir, partition_index=index,
        partition_count=count, device=a.device, amp=a.amp, threads=a.threads, ca_cert=a.ca_cert, tls_cert=a.tls_cert,
        tls_key=a.tls_key, tls_server_name=a.tls_server_name, token=a.token or env.get("FEDTL_TOKEN") or None,
        compression=a.compression, chunk_bytes=a.chunk_bytes, max_wait=max_wait, first_wait=first_wait, audit_dir=audit.folder(a), log_level=a.log_level,
        log_format=a.log_format, max_epsilon=max_epsilon, min_client_dp_noise=min_noise, dp_delta=delta,
        simulate_link=pacing.link(a), allow_plugins=tuple(a.allow_plugin), helper=helper, helper_ca_cert=helper_ca,
        policy=policy.policy(a, max_epsilon),
    )
