"""Every bad flag fails with a message that names it; good ones become frozen configs."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedtl.client.config import parse_args as client_args
from fedtl.common.config import PARTITION_NONE, PARTITION_SERVER, TrainConfig, parse_partition
from fedtl.common.errors import ConfigError
from fedtl.server.config import parse_args as server_args


def test_server_defaults_parse() -> None:
    cfg = server_args([], env={})
    assert cfg.schedule.rounds == 3 and cfg.train.algorithm == "fedavg" and cfg.strategy.lr == 1.0 and cfg.schedule.min_fit_clients == 2
    fedsgd = server_args(["--algorithm", "fedsgd", "--lr", "0.2"], env={})
    assert fedsgd.strategy.lr == 0.2
    assert server_args([], env={"FEDTL_TOKEN": "x" * 20}).token == "x" * 20


def test_each_server_optimizer_has_its_own_default_learning_rate() -> None:
    from fedtl.server.strategies import OPTIMIZERS

    for name, entry in OPTIMIZERS.items():
        assert server_args(["--server-optimizer", name], env={}).strategy.lr == entry.default_lr
    assert server_args(["--server-optimizer", "adam", "--server-lr", "0.3"], env={}).strategy.lr == 0.3
    yogi = server_args(["--server-optimizer", "yogi", "--server-beta1", "0.5", "--server-beta2", "0.9", "--server-tau", "0.01"], env={})
    assert (yogi.strategy.beta1, yogi.strategy.beta2, yogi.strategy.tau) == (0.5, 0.9, 0.01)


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
        # combinations that cannot work are refused at parse time, not in round 1
        (["--feature-cache", "on", "--train", "all"], "--feature-cache on"),
        (["--feature-cache", "on", "--train", "head", "--augment"], "--augment"),
        (["--server-optimizer", "adamw"], "--server-optimizer"),
        (["--aggregation", "median-of-means"], "--aggregation"),
        (["--server-beta1", "0.5"], "--server-beta1"),
        (["--server-optimizer", "yogi", "--server-bias-correction"], "--server-bias-correction"),
        (["--server-optimizer", "adam", "--server-beta2", "1.0"], "--server-beta2"),
        (["--server-optimizer", "adam", "--server-tau", "0"], "--server-tau"),
        (["--algorithm", "fedsgd", "--local-epochs", "2"], "--local-epochs"),
        (["--over-select", "0.5"], "--over-select"),
        (["--model", "resnet9000"], "--model"),
        (["--train", "some"], "--train"),
        (["--device", "gpu"], "--device"),
        (["--weight-cap", "-1"], "--weight-cap"),
        (["--round-retries", "-1"], "--round-retries"),
        (["--alpha", "0"], "--alpha"),
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
        (["--device", "tpu"], "--device"),
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
    assert (cfg.max_wait, cfg.first_wait) == (600.0, 180.0), "a server that never answered is given up on sooner"
    asked = client_args(["--data-cache", str(tmp_path), "--max-wait", "30"], env={})
    assert (asked.max_wait, asked.first_wait) == (30.0, 30.0)


def test_a_client_pointed_at_nothing_says_what_to_check_and_gives_up(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "client", "--server", f"127.0.0.1:{port}", "--data", "synthetic:20", "--data-cache",
                           str(tmp_path), "--max-wait", "3"], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 4, done.stderr[-2000:]
    assert done.stderr.count(f"nothing answers at 127.0.0.1:{port}: is the server started, and is the port right?") == 1
    assert "it never answered: is the server started, and are --server's host and port right?" in done.stderr
    retries = [line for line in done.stderr.splitlines() if "waiting for the server" in line]
    assert retries and all(len(line) < 160 for line in retries), "a short line a retry (they were 230 characters)"


def test_train_config_validates() -> None:
    with pytest.raises(ConfigError, match="--momentum"):
        TrainConfig(momentum=1.0)
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainConfig(batch_size=0)


@pytest.mark.parametrize("parse", [server_args, client_args])
def test_an_unknown_log_level_is_refused_not_silently_info(parse, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        parse(["--log-level", "verbose"], env={})
    assert "--log-level" in capsys.readouterr().err
    assert parse(["--log-level", "debug"], env={}).log_level == "DEBUG"


def test_every_training_setting_has_a_flag_with_help_and_reaches_the_config() -> None:
    from dataclasses import fields

    from fedtl.server.config import build_parser

    helps = {a.dest: a.help for a in build_parser()._actions}
    for f in fields(TrainConfig):
        if f.metadata.get("flag") is False:  # set by the coordinator per round (the statistics round of --head-init)
            assert f.name not in helps, f.name
            continue
        assert f.name in helps and helps[f.name], f.name
    cfg = server_args(["--local-epochs", "3", "--personal-epochs", "2", "--augment", "--seed", "9"], env={})
    assert (cfg.train.local_epochs, cfg.train.personal_epochs, cfg.train.augment, cfg.train.seed) == (3, 2, True, 9)


def test_client_and_server_agree_on_client_names() -> None:
    from fedtl.common.config import client_name_problem

    assert client_name_problem("")  # the server's check (a client without --name uses its host name)
    for bad in ["a b", "tab\there", "x" * 129, "new\nline"]:
        assert client_name_problem(bad)
        with pytest.raises(ConfigError, match="--name"):
            client_args(["--name", bad], env={})
    assert client_name_problem("org-a.site_1") is None


def test_a_missing_weights_file_fails_before_any_data_is_loaded(tmp_path: Path) -> None:
    from fedtl.server.app import build

    cfg = server_args(["--weights", str(tmp_path / "missing.pth"), "--data", str(tmp_path / "no-data-either")], env={})
    with pytest.raises(ConfigError, match="--weights .*missing.pth: no such file"):
        build(cfg)


def test_a_url_is_not_a_server_address() -> None:
    with pytest.raises(ConfigError, match="without a scheme, e.g. 10.0.0.5:50051"):
        client_args(["--server", "http://10.0.0.5:50051/"], env={})


def test_a_shared_token_and_per_client_tokens_are_refused_together(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("alice " + "a" * 20 + "\nbob " + "b" * 20 + " shard=1\n")
    with pytest.raises(ConfigError, match="--token and --tokens-file: choose one"):
        server_args(["--tokens-file", str(tokens), "--token", "s" * 20], env={})
    with pytest.raises(ConfigError, match="--token and --tokens-file"):
        server_args(["--tokens-file", str(tokens)], env={"FEDTL_TOKEN": "s" * 20})
    with pytest.raises(ConfigError, match="--num-partitions"):
        server_args(["--tokens-file", str(tokens)], env={})  # a pinned shard needs a fixed shard count
    assert server_args(["--tokens-file", str(tokens), "--num-partitions", "2"], env={}).tokens_file == tokens


@pytest.mark.parametrize("argv, says", [
    (["--aggregation", "krum", "--byzantine", "1", "--min-clients", "4"], "needs at least 5 updates a round"),
    (["--aggregation", "bulyan", "--byzantine", "1", "--min-clients", "6"], "needs at least 7 updates"),
    (["--aggregation", "dnc", "--byzantine", "2", "--min-clients", "4"], "needs at least 5 updates a round"),
    (["--aggregation", "fltrust"], "--root-data"),
    (["--root-data", "synthetic:100"], "--root-data"),
    (["--trim-fraction", "0.5"], "--trim-fraction"),
    (["--norm-quantile", "0.5", "--max-update-norm", "3"], "--norm-quantile"),
])
def test_robust_rules_refuse_what_cannot_work_at_start(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        server_args(argv, env={})
    assert server_args(["--aggregation", "krum", "--byzantine", "1", "--min-clients", "5"], env={}).strategy.rule == "krum"


def test_an_order_based_rule_whose_round_cannot_fit_is_refused_naming_the_alternatives(tmp_path: Path) -> None:
    from fedtl.server.app import build

    args = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100", "--run-dir", str(tmp_path / "run"),
            "--aggregation", "median", "--max-aggregate-memory", "0.1"]  # 100 KB: 1000 possible clients x 23 KB do not fit
    with pytest.raises(ConfigError, match="--clients-per-round.*--aggregation mean with --max-update-norm"):
        build(server_args(args, env={}))
    build(server_args([*args, "--clients-per-round", "3"], env={})).run_folder.release()


@pytest.mark.parametrize("flags, message", [
    (["--aggregation", "median"], "--aggregation median .* composes with --aggregation mean"),
    (["--norm-quantile", "0.9"], "--norm-quantile .* hides"),
    (["--client-eval-every", "1", "--max-update-norm", "5"], "--client-eval-every"),
    ([], "needs a norm bound"),
    (["--max-update-norm", "5", "--min-clients", "2"], "at least 3 clients"),
    (["--max-update-norm", "5", "--min-clients", "8", "--secagg-threshold", "4"], "not more than half"),
    (["--max-update-norm", "5", "--min-clients", "8", "--secagg-threshold", "8"], "no secret could be rebuilt"),
    (["--max-update-norm", "5", "--min-clients", "8", "--secagg-bits", "32", "--secagg-max-weight", "1073741824"], "modulus"),
])
def test_secure_aggregation_refuses_what_cannot_work_or_would_not_protect(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_args(["--secure-aggregation", *flags], env={})


def test_secure_aggregation_settings_and_their_flags_without_it() -> None:
    cfg = server_args(["--secure-aggregation", "--max-update-norm", "5", "--min-clients", "8", "--weighting", "uniform"], env={})
    assert cfg.strategy.secure is not None and cfg.strategy.secure.clip == 5 and cfg.strategy.secure.max_weight == 1
    with pytest.raises(ConfigError, match="--secagg-threshold applies with --secure-aggregation"):
        server_args(["--secagg-threshold", "3"], env={})


@pytest.mark.parametrize("flags, message", [
    ([], "needs --max-update-norm"),
    (["--max-update-norm", "5", "--min-clients", "2"], "at least 3 clients"),
    (["--max-update-norm", "5", "--secure-aggregation"], "choose one"),
    (["--max-update-norm", "5", "--aggregation", "median"], "composes with --aggregation mean"),
    (["--max-update-norm", "5", "--upload-codec", "int8"], "drop --upload-codec int8"),
    (["--max-update-norm", "5", "--validated-bits", "17"], "1..16"),
    (["--max-update-norm", "5", "--helper-ca-cert", "/no/such.pem"], "no such file"),
])
def test_validated_aggregation_refuses_what_cannot_work(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_args(["--helper", "helper.example.org:50052", "--min-clients", "3", *flags], env={})


def test_validated_aggregation_settings_and_a_site_that_names_its_own_helper() -> None:
    cfg = server_args(["--helper", "h.example.org:50052", "--max-update-norm", "5", "--min-clients", "3", "--helper-token", "t" * 20],
                      env={})
    assert cfg.strategy.validated is not None and cfg.strategy.validated.clip == 5 and cfg.strategy.validated.bits == 16
    with pytest.raises(ConfigError, match="--helper 'nope': use HOST:PORT"):
        server_args(["--helper", "nope", "--max-update-norm", "5", "--min-clients", "3"], env={})
    with pytest.raises(ConfigError, match="apply with --helper"):
        server_args(["--validated-bits", "8"], env={})
    from fedtl.simulation.config import parse_simulation_args

    with pytest.raises(ConfigError, match="the simulation runs neither the helper"):
        parse_simulation_args(["--helper", "h.example.org:50052", "--max-update-norm", "5", "--min-clients", "3"], env={})
    site = client_args(["--helper", "h.example.org:50052", "--name", "a"], env={})
    assert site.helper == "h.example.org:50052" and site.helper_ca_cert is None
    with pytest.raises(ConfigError, match="--helper-ca-cert applies with --helper"):
        client_args(["--helper-ca-cert", "x.pem", "--name", "a"], env={})
    with pytest.raises(ConfigError, match="--helper-ca-cert /no/ca.pem"):
        client_args(["--helper", "h.example.org:50052", "--helper-ca-cert", "/no/ca.pem", "--name", "a"], env={})


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_a_shortfall_names_it() -> None:
    import resource
    import subprocess
    import sys

    # in a child process: the limit is per process, and this one must keep its own
    code = ("import resource, logging; logging.basicConfig(level=logging.WARNING); "
            "from fedtl.server.fd_limit import raise_fd_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "soft, hard = raise_fd_limit(10); print(soft, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0]); "
            "raise_fd_limit(hard + 1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    soft, hard, now = (int(x) for x in out.stdout.split())
    assert soft == now == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f"--max-clients {hard + 1} needs about" in out.stderr and "ulimit -n" in out.stderr


@pytest.mark.parametrize("program", ["server", "client", "simulation"])
def test_every_float_flag_refuses_nan_and_infinity_with_one_line(program: str, capsys) -> None:  # type: ignore[no-untyped-def]
    import importlib

    from fedtl.common.sections import finite_float

    module = importlib.import_module({"server": "fedtl.server.flags", "client": "fedtl.client.config",
                                      "simulation": "fedtl.simulation.config"}[program])
    parser = module.build_parser()
    floats = [a for a in parser._actions if a.type is finite_float]
    assert len(floats) >= (20 if program != "client" else 3), "every float flag goes through the finite check"
    assert not [a.dest for a in parser._actions if a.type is float], "a float flag without the finite check"
    required = ["--server", "h:1"] if program == "client" else []
    for action in floats:
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(SystemExit) as exited:
                parser.parse_args([*required, f"{action.option_strings[-1]}={bad}"])
            assert exited.value.code == 2
            err = capsys.readouterr().err
            assert "must be a finite number" in err and err.count("\n") == 1, "one line that names the flag, no usage dump"


@pytest.mark.parametrize("ref", ["antigravity:x ", " antigravity:x", "antigravity:x\n", "antigravity", "antigravity:",
                                 "antigravity..x:y", "antigravity:x:y", "timm:antigravity", "../antigravity:x"])
def test_no_malformed_plugin_reference_reaches_the_importer(ref: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib
    import sys

    from fedtl.common import plugin_refs
    from fedtl.common.config import DataAssignment, TrainTask

    imported: list[str] = []
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name))
    monkeypatch.delitem(sys.modules, "antigravity", raising=False)
    with pytest.raises(ConfigError):
        plugin_refs.load(ref, "--train-fn")
    with pytest.raises(ConfigError):  # what a coordinator's task would carry is refused before any client code sees it
        TrainTask(1, (), "d", TrainConfig(train_fn=ref), DataAssignment())
    plugin_refs.check_allowed(ref, ())  # not a plugin: a zoo name for a model, which imports nothing of its own
    assert imported == [] and "antigravity" not in sys.modules


def test_the_plain_mean_is_norm_bounded_by_default_and_other_bounds_take_its_place() -> None:
    base = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:100"]

    def quantile(*flags: str) -> float:
        return server_args([*base, *flags], env={}).strategy.norm_quantile

    assert quantile() == 0.5, "from round 1, no update moves the model more than the median one"
    assert quantile("--norm-quantile", "0") == 0 and quantile("--norm-quantile", "0.8") == 0.8
    assert quantile("--max-update-norm", "3") == 0 and quantile("--aggregation", "median") == 0
    assert quantile("--secure-aggregation", "--max-update-norm", "3", "--min-clients", "3") == 0
    assert quantile("--client-dp-clip", "1", "--client-dp-noise", "1") == 0


@pytest.mark.parametrize("module, typo, meant", [("server", "--epochs", "--local-epochs"), ("client", "--sever", "--server"),
                                                 ("simulation", "--virtual-client", "--virtual-clients")])
def test_help_and_flag_errors_answer_without_loading_torch(module: str, typo: str, meant: str) -> None:
    """--help and a mistyped flag are instant: nothing on their path imports torch (here it cannot: it is blocked)."""
    root = Path(__file__).resolve().parents[1]
    blocked = "import sys, runpy; sys.modules['torch'] = None; sys.argv[0] = 'x'; runpy.run_module(sys.argv.pop(1), run_name='__main__')"
    helped = subprocess.run([sys.executable, "-c", blocked, module, "--help"], capture_output=True, text=True, timeout=60, cwd=root)
    assert helped.returncode == 0 and "--help" in helped.stdout, helped.stderr[-2000:]
    typed = subprocess.run([sys.executable, "-c", blocked, module, typo, "2"], capture_output=True, text=True, timeout=60, cwd=root)
    assert typed.returncode == 2 and typed.stderr.count("\n") == 1, typed.stderr[-2000:]
    assert f"unrecognized arguments: {typo} 2 (did you mean {meant}?)" in typed.stderr
