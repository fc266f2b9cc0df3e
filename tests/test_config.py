"""Every bad flag fails with a message that names it; good ones become frozen configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import parse_args as client_args
from common.config import PARTITION_NONE, PARTITION_SERVER, TrainConfig, parse_partition
from common.errors import ConfigError
from server.config import parse_args as server_args


def test_server_defaults_parse() -> None:
    cfg = server_args([], env={})
    assert cfg.rounds == 3 and cfg.train.algorithm == "fedavg" and cfg.server_lr == 1.0 and cfg.min_fit_clients == 2
    fedsgd = server_args(["--algorithm", "fedsgd", "--lr", "0.2"], env={})
    assert fedsgd.server_lr == 0.2
    assert server_args([], env={"FEDTL_TOKEN": "x" * 20}).token == "x" * 20


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--rounds", "0"], "--rounds"),
        (["--min-clients", "0"], "--min-clients"),
        (["--clients-per-round", "-1"], "--clients-per-round"),
        (["--fraction", "1.5"], "--fraction"),
        (["--clients-per-round", "2", "--min-fit-clients", "3"], "--min-fit-clients"),
        (["--round-timeout", "0"], "--round-timeout"),
        (["--partition-scheme", "random"], "--partition-scheme"),
        (["--holdout-fraction", "1"], "--holdout-fraction"),
        (["--compression", "zstd"], "--compression"),
        (["--chunk-bytes", str(8 << 20)], "--chunk-bytes"),
        (["--tls-cert", "c.pem"], "--tls-cert"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "--tls-cert"),
        (["--address", "nohost"], "--address"),
        (["--algorithm", "fedprox"], "--algorithm"),
        (["--lr", "0"], "--lr"),
        (["--feature-cache", "maybe"], "--feature-cache"),
        (["--client-eval-every", "1"], "--holdout-fraction"),
    ],
)
def test_bad_server_flags_name_themselves(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        server_args(argv, env={})


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--server", "localhost"], "--server"),
        (["--server", "host:99999"], "--server"),
        (["--partition", "4/4"], "--partition"),
        (["--partition", "x"], "--partition"),
        (["--ca-cert", "missing.pem"], "--ca-cert"),
        (["--tls-cert", "a", "--tls-key", "b"], "--ca-cert"),
        (["--name", "has space"], "--name"),
    ],
)
def test_bad_client_flags_name_themselves(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        client_args(argv, env={})


def test_client_defaults(tmp_path: Path) -> None:
    cfg = client_args(["--name", "org-a", "--data-cache", str(tmp_path)], env={"FEDTL_TOKEN": "t" * 20})
    assert cfg.workdir == tmp_path / "clients" / "org-a" and cfg.token == "t" * 20
    assert (cfg.partition_index, cfg.partition_count) == (PARTITION_SERVER, 0)
    assert parse_partition("none") == (PARTITION_NONE, 0) and parse_partition("2/5") == (2, 5)


def test_train_config_validates() -> None:
    with pytest.raises(ConfigError, match="--momentum"):
        TrainConfig(momentum=1.0)
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainConfig(batch_size=0)
