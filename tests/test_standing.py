"""A standing federation with real processes: one coordinator, sites that stay, jobs submitted, listed, followed and
stopped through `fedtl`, both roles, a refusing site, statistics and cross-site evaluation jobs, and a kill -9 with a
queue (docs/jobs.md)."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import ENV, ROOT, Proc

from fedtl.common import checkpoint
from fedtl.common.batches import InputTransform
from fedtl.common.config import DataAssignment
from fedtl.common.data import open_split
from fedtl.common.evaluation import evaluate
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import rebuild_trained
from fedtl.common.shards import shard_indices
from fedtl.server.config import parse_args

OPERATOR = "operator-token-0123456789abcdef"
SITE = "site-token-0123456789abcdef"
DASHBOARD = "dashboard-token-0123456789abcdef"
JOB = ["--rounds", "2", "--min-clients", "2", "--seed", "7"]
SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:600", "--finish-grace", "5", "--wait-timeout", "120"]


class Standing:
    def __init__(self, folder: Path) -> None:
        self.folder, self.run_dir = folder, folder / "run"
        self.server: Proc | None = None
        self.sites: dict[str, Proc] = {}
        self.address = ""
        self.starts = 0

    def start(self, *extra: str) -> Proc:
        """The first start picks a free port; a restart takes the same one back (the sites know it)."""
        self.starts += 1
        (self.run_dir / "server.json").unlink(missing_ok=True)
        self.server = Proc(["-m", "server", "--standing", "--address", self.address or "127.0.0.1:0", "--run-dir", str(self.run_dir), "--token", SITE,
                            *SERVER, *extra], self.folder / f"server{self.starts}.log", env={"FEDTL_OPERATOR_TOKEN": OPERATOR})
        self.server.wait_for("standing coordinator on")
        self.address = json.loads((self.run_dir / "server.json").read_text())["address"]
        return self.server

    def site(self, name: str, *extra: str, token: str = SITE) -> Proc:
        self.sites[name] = Proc(["-m", "client", "--server", self.address, "--name", name, "--token", token, "--data", "synthetic:600",
                                 "--data-cache", str(self.folder / "cache"), *extra], self.folder / f"{name}.log")
        return self.sites[name]

    def fedtl(self, *args: str, token: str = OPERATOR) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fedtl.cli", *args[:1], "--server", self.address, "--operator-token", token, *args[1:]]
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)

    def submit(self, *flags: str) -> str:
        done = self.fedtl("submit", "--", *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]  # the id is the last word printed

    def follow(self, job: str) -> str:
        """`fedtl logs JOB -f` returns once the job has ended."""
        done = self.fedtl("logs", job, "-f")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def state(self, job: str) -> str:
        return json.loads((self.run_dir / "jobs" / job / "job.json").read_text())["state"]

    def close(self) -> None:
        for proc in [*self.sites.values(), *([self.server] if self.server else [])]:
            proc.close()


@pytest.fixture
def standing(tmp_path: Path):  # type: ignore[no-untyped-def]
    fed = Standing(tmp_path)
    yield fed
    fed.close()


@pytest.mark.multiprocess
def test_jobs_run_one_after_another_on_the_same_sites_with_roles_policy_and_statistics(standing: Standing) -> None:
    with socket.socket() as probe:  # a free port for the dashboard (the coordinator binds it again for each job)
        probe.bind(("127.0.0.1", 0))
        dashboard = probe.getsockname()[1]
    standing.start("--dashboard", f"127.0.0.1:{dashboard}", "--dashboard-token", DASHBOARD)
    a, b = standing.site("a", "--share-personal-head"), standing.site("b")
    c = standing.site("c", "--accept-models", "resnet18")  # its policy refuses the tiny model
    for site in (a, b, c):
        standing.server.wait_for(f"site {site.log_path.stem} connected")

    # roles: a site's token cannot submit; the operator's cannot join as a site
    refused = standing.fedtl("submit", "--", *JOB, token=SITE)
    assert refused.returncode == 3 and "a site's token cannot submit" in refused.stderr, refused.stderr
    intruder = standing.site("intruder", token=OPERATOR)
    assert intruder.wait(120) == 3 and "operator's token, which cannot join as a site" in intruder.log
    bad = standing.fedtl("submit", "--", "--address", "0.0.0.0:1")
    assert bad.returncode == 2 and "--address is the standing coordinator's own setting" in bad.stderr

    first = standing.submit(*JOB)
    log = standing.follow(first)
    assert "site c refused the job: model tiny_cnn is not one it trains (--accept-models resnet18)" in log
    assert "round 2/2 |" in log and "done: run complete after 2 rounds" in log
    assert "job " + first + " refused: model tiny_cnn" in c.log
    assert _state(dashboard)["run"]["run_id"] == _run_ids(standing)[0]  # the dashboard shows the job that ended last
    second = standing.submit(*JOB, "--lr", "0.05", "--personal-epochs", "1")  # each site also fits a head of its own
    assert "done: run complete" in standing.follow(second)
    state = _state(dashboard)
    assert state["run"]["run_id"] == _run_ids(standing)[1] and state["run"]["status"] == "completed"
    assert [r["round"] for r in state["rounds"]] == [0, 1, 2]
    assert (standing.run_dir / "jobs" / second / "run" / "final_model.safetensors").is_file()
    for site in (a, b):
        assert site.poll() is None and site.log.count("staying for the next job") == 2  # the same processes, both jobs

    stats = standing.submit("--kind", "statistics", "--partition-scheme", "dirichlet", "--alpha", "0.1", "--min-clients", "3",
                            "--seed", "7")
    assert "done: 3 site(s) answered" in standing.follow(stats)
    result = json.loads((standing.run_dir / "jobs" / stats / "run" / "statistics.json").read_text())
    labels = np.asarray(open_split("synthetic:600", "train", standing.folder / "cache").labels)
    for index, name in enumerate(["a", "b", "c"]):  # auto shards go to the connected sites in name order
        train, _ = shard_indices(labels, DataAssignment(index, 3, "dirichlet", 0.1, 2, 7, 0.0, 0))
        central = np.bincount(labels[train], minlength=10)
        assert [result["sites"][name]["classes"][f"class{k}"] for k in range(10)] == central.tolist(), name
    assert result["total"]["examples"] == 600

    # cross-site evaluation: both final models on every site's held-out slice; the site whose policy refuses tiny_cnn says so
    flags = ["--holdout-fraction", "0.2", "--seed", "7", "--min-clients", "3"]
    evaluation = standing.submit("--kind", "evaluate", "--evaluate", f"{first},{second}", "--personal", *flags)
    log = standing.follow(evaluation)
    assert "site c refused the job: " + first + ": model tiny_cnn is not one it trains" in log
    assert f"site a shared its personal head(s) of {second}" in log  # b did not allow it; a's head is of the second job's run
    matrix = json.loads((standing.run_dir / "jobs" / evaluation / "run" / "evaluation.json").read_text())
    assert matrix["models"] == [first, second, f"{second}+a"] and matrix["sites"] == ["a", "b"] and "c" in matrix["refused"]
    shown = _state(dashboard)["matrix"]  # the dashboard draws the same matrix
    assert shown == {"job": evaluation, "models": matrix["models"], "sites": ["a", "b"], "accuracy": matrix["accuracy"]}
    plan = parse_args(flags, env={}).partitions
    source = open_split("synthetic:600", "train", standing.folder / "cache")
    personal = rebuild_trained(checkpoint.load_tensors(standing.run_dir / "jobs" / second / "run" / "final_model.safetensors"), "a's")
    personal[0].stages[-1][1].load_state_dict(checkpoint.load_tensors(standing.folder / "cache" / "clients" / "a" /
                                                                      "personal_head.safetensors").tensors)
    for model in (first, second, f"{second}+a"):
        net, info = personal if model.endswith("+a") else rebuild_trained(
            checkpoint.load_tensors(standing.run_dir / "jobs" / model / "run" / "final_model.safetensors"), model)
        for index, name in enumerate(["a", "b"]):  # each site alone: its held-out slice, the model as the job saved it
            assignment = DataAssignment(index, 3, plan.scheme, plan.alpha, plan.classes_per_client, plan.seed, plan.holdout_fraction,
                                        plan.per_class_limit)
            _, held_out = shard_indices(np.asarray(source.labels), assignment)
            alone = evaluate(net, ImageInputs.of(source.load(held_out), InputTransform(info.mean, info.std, info.image_size, False),
                                                 torch.device("cpu")))
            assert alone.examples == matrix["examples"][model][name] > 0
            assert alone.accuracy == matrix["accuracy"][model][name]
            assert alone.loss == pytest.approx(matrix["loss"][model][name], rel=1e-6)

    listing = standing.fedtl("ls")
    assert listing.returncode == 0 and [line.split()[2] for line in listing.stdout.splitlines()] == ["done"] * 4

    long = standing.submit("--rounds", "500", "--min-clients", "2")
    queued = standing.submit(*JOB)
    assert standing.fedtl("stop", queued).returncode == 0 and standing.state(queued) == "stopped"
    standing.server.wait_for("round 1/500 |")
    assert standing.fedtl("stop", long).returncode == 0
    assert "an operator asked the job to stop" in standing.follow(long)
    assert standing.state(long) == "stopped"
    assert a.poll() is None and b.poll() is None


def _state(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/state", headers={"Authorization": f"Bearer {DASHBOARD}"})
    return json.loads(conn.getresponse().read())


def _run_ids(standing: Standing) -> list[str]:
    """The training jobs' run ids, in the order they started (the coordinator's log)."""
    return re.findall(r"fedtl.run: run (\w+): \d+ rounds", standing.server.log)


@pytest.mark.multiprocess
def test_a_coordinator_killed_mid_job_resumes_it_then_runs_the_queue(standing: Standing) -> None:
    standing.start()
    a = standing.site("a")
    b = Proc(["-m", "client", "--server", standing.address, "--name", "b", "--token", SITE, "--data", "synthetic:600", "--data-cache",
              str(standing.folder / "cache")], standing.folder / "b.log", env={"FEDTL_FAULT": "train:15:stop"})  # freezes in round 2
    standing.sites["b"] = b
    first = standing.submit("--rounds", "3", "--min-clients", "2", "--seed", "7")
    second = standing.submit(*JOB)
    a.wait_for("round 2: sent")
    standing.server.kill()
    assert standing.state(first) == "running" and standing.state(second) == "queued"
    standing.start()
    b.signal(signal.SIGCONT)
    log = standing.follow(first)
    assert "resumed after the coordinator restarted" in log and "done: run complete after 3 rounds" in log
    rounds = [json.loads(line)["round"] for line in (standing.run_dir / "jobs" / first / "run" / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]  # each round logged once
    assert "done: run complete after 2 rounds" in standing.follow(second)
    assert a.poll() is None and b.poll() is None


@pytest.mark.multiprocess
def test_an_operator_certificate_is_the_operators_credential_and_never_a_sites(tmp_path: Path) -> None:
    """Mutual TLS and no operator token: the certificate named by --operator-cert-name submits; a site's certificate cannot,
    and the operator's cannot join as a site."""
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "server.certs", "--out", str(certs), "--client", "a", "--client", "b", "--operator", "ops"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    server = Proc(["-m", "server", "--standing", "--address", "127.0.0.1:0", "--run-dir", str(tmp_path / "run"), *tls, "--tls-client-ca",
                   str(certs / "ca.pem"), "--operator-cert-name", "ops", *SERVER], tmp_path / "server.log")
    procs = [server]
    try:
        server.wait_for("standing coordinator on")
        address = json.loads((tmp_path / "run" / "server.json").read_text())["address"]

        def site(name: str, pair: str) -> Proc:
            procs.append(Proc(["-m", "client", "--server", address, "--name", name, "--ca-cert", str(certs / "ca.pem"), "--tls-cert",
                               str(certs / f"{pair}.pem"), "--tls-key", str(certs / f"{pair}.key"), "--data", "synthetic:600",
                               "--data-cache", str(tmp_path / "cache")], tmp_path / f"{name}.log"))
            return procs[-1]

        def fedtl(pair: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "fedtl.cli", args[0], "--server", address, "--ca-cert", str(certs / "ca.pem"),
                                   "--tls-cert", str(certs / f"{pair}.pem"), "--tls-key", str(certs / f"{pair}.key"), *args[1:]],
                                  cwd=ROOT, env={k: v for k, v in ENV.items() if k != "FEDTL_OPERATOR_TOKEN"}, capture_output=True,
                                  text=True, timeout=120)

        intruder = site("ops", "operator-ops")
        assert intruder.wait(120) == 3 and "operator's certificate, which cannot join as a site" in intruder.log
        site("a", "client-a"), site("b", "client-b")
        as_site = fedtl("client-a", "ls")
        assert as_site.returncode == 3 and "nor can a site's certificate" in as_site.stderr, as_site.stderr
        submitted = fedtl("operator-ops", "submit", "--", *JOB)
        assert submitted.returncode == 0, submitted.stderr
        log = fedtl("operator-ops", "logs", submitted.stdout.split()[-1], "-f")
        assert "done: run complete after 2 rounds" in log.stdout, log.stdout + log.stderr
    finally:
        for proc in procs:
            proc.close()
