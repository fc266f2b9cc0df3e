"""--config FILE.toml: the flags' settings in a file, flags win, one file for both sides, unknown keys named with the
closest valid one, and --print-config's output read back gives the same configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedtl.client.config import parse_args as client_args
from fedtl.common.errors import ConfigError
from fedtl.server.config import parse_args as server_args

FILE = """
rounds = 7
min_clients = 3
upload-codec = "int8"
fedbn = true
[server]
lr = 0.05
[client]
server = "10.0.0.5:50051"
threads = 2
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


def test_the_file_sets_what_flags_leave_and_flags_win(tmp_path: Path) -> None:
    path = _file(tmp_path, FILE.replace("[client]", "").replace('server = "10.0.0.5:50051"\nthreads = 2', ""))
    cfg = server_args(["--config", str(path), "--run-dir", str(tmp_path / "run"), "--rounds", "2"], env={})
    assert cfg.schedule.rounds == 2 and cfg.schedule.min_clients == 3  # the flag beat the file; the file beat the default
    assert cfg.upload_codec == "int8" and cfg.fedbn and cfg.train.lr == 0.05


def test_one_file_serves_both_sides_through_its_tables(tmp_path: Path) -> None:
    path = _file(tmp_path, "[server]\nrounds = 4\n[client]\nserver = '10.0.0.5:50051'\nthreads = 2\n")
    cfg = client_args(["--config", str(path), "--name", "a"], env={})
    assert cfg.server == "10.0.0.5:50051" and cfg.threads == 2
    assert server_args(["--config", str(path), "--run-dir", str(tmp_path / "r")], env={}).schedule.rounds == 4


def test_top_level_keys_serve_every_program_each_taking_its_own(tmp_path: Path) -> None:
    """The docs' one-file layout: top-level `rounds` used to stop every client ("unknown key 'rounds' for the client")."""
    path = _file(tmp_path, "rounds = 4\nupload-codec = 'int8'\ndata = 'synthetic:40'\nallow-plugin = ['examples']\n")
    client = client_args(["--config", str(path), "--name", "a"], env={})
    assert client.data == "synthetic:40" and client.allow_plugins == ("examples",)
    server = server_args(["--config", str(path), "--run-dir", str(tmp_path / "r")], env={})
    assert server.schedule.rounds == 4 and server.data == "synthetic:40"
    with pytest.raises(ConfigError, match="unknown key 'epochs' for the client"):  # no program has it: still an error
        client_args(["--config", str(_file(tmp_path, "epochs = 2\n")), "--name", "a"], env={})


@pytest.mark.parametrize("text, words", [
    ("min_client = 3\n", "unknown key 'min_client' for the server; did you mean 'min-clients'"),
    ("fedbn = 1\n", "fedbn is a switch"),
    ("rounds = [1, 2]\n", "rounds takes one value"),
    ("min-clients = {a = 1}\n", "not a table"),
    ("[server.rounds]\nmin-client = 3\n", "[server.rounds] has no key 'min-client'; did you mean 'min-clients'"),
    ("[server.rounds]\ntrim-fraction = 0.2\n", "[server.rounds] has no key 'trim-fraction'"),
    ("config = 'x.toml'\n", "cannot be set"),
    ("rounds = \n", "not readable TOML"),
    ("[server]\nupload-codec = 'zip'\n", None),
])
def test_a_bad_file_gets_one_line_that_says_what_to_fix(tmp_path: Path, text: str, words: str | None) -> None:
    path = _file(tmp_path, text)
    if words is None:  # a bad value goes through the flag's own check, exactly as on the command line
        with pytest.raises(SystemExit):
            server_args(["--config", str(path), "--run-dir", str(tmp_path / "r")], env={})
        return
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        server_args(["--config", str(path), "--run-dir", str(tmp_path / "r")], env={})
    with pytest.raises(ConfigError, match="no such file"):
        server_args(["--config", str(tmp_path / "absent.toml")], env={})


def test_print_config_output_read_back_gives_the_same_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, FILE)
    base = ["--run-dir", str(tmp_path / "run"), "--token", "s3cret-s3cret-s3cret"]
    with pytest.raises(SystemExit) as stop:
        server_args(["--config", str(path), *base, "--print-config"], env={})
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    parsed = tomllib.loads(printed)["server"]  # a table per feature
    assert parsed["rounds"]["rounds"] == 7 and parsed["transport"]["upload-codec"] == "int8"
    assert parsed["security"]["token"] == "<redacted>" and "s3cret-s3cret-s3cret" not in printed
    again = _file(tmp_path, printed.replace('token = "<redacted>"', ""))
    first = server_args(["--config", str(path), *base], env={})
    second = server_args(["--config", str(again), "--token", "s3cret-s3cret-s3cret"], env={})
    assert first.effective_config == second.effective_config


def test_each_feature_has_its_table_and_a_rules_knobs_live_under_the_rule(tmp_path: Path) -> None:
    path = _file(tmp_path, "[server.rounds]\nrounds = 4\nmin-clients = 5\n[server.aggregation]\naggregation = 'trimmed-mean'\n"
                           "[server.trimmed-mean]\ntrim-fraction = 0.25\n[client.privacy]\nmax-epsilon = 3.0\n")
    cfg = server_args(["--config", str(path), "--run-dir", str(tmp_path / "r")], env={})
    assert cfg.schedule.rounds == 4 and cfg.strategy.rule == "trimmed-mean" and cfg.strategy.rule_options == {"fraction": 0.25, "at_least": 0}
    assert client_args(["--config", str(path), "--name", "a"], env={}).max_epsilon == 3.0
    with pytest.raises(ConfigError, match="--trim-fraction is a knob of --aggregation trimmed-mean, not of --aggregation krum"):
        server_args(["--aggregation", "krum", "--trim-fraction", "0.2", "--min-clients", "5", "--run-dir", str(tmp_path / "r")], env={})
