"""The Docker image and docker-compose.yml on a real engine (../shared/docker/engine.sh up starts one).

The image is built once per session (`docker compose build`; a warm cache makes that seconds) and every
test runs its own compose project (`-p fedtl-test-PID-N`) with a tiny model on synthetic data, then
removes its containers, networks and volumes (`down -v`). When no engine can start, every test here skips
with the reason engine.sh printed (.ci/run also says so in a banner).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import count
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT.parent / "shared" / "docker" / "engine.sh"
IMAGE = os.environ.get("FEDTL_IMAGE", "fedtl:0.2.0")
# Every variable docker-compose.yml reads: cleared, so the developer's shell cannot change what is tested.
SETTINGS = ("FEDTL_IMAGE", "TORCH_INDEX_URL", "PRETRAINED", "THREADS", "SERVER_THREADS", "FEDTL_TOKEN", "SERVER_NAMES", "DATA",
            "IMPORT_DIR", "RUN_NAME", "MODEL", "WEIGHTS", "TRAIN", "IMAGE_SIZE", "ROUNDS", "CLIENTS", "JOIN_GRACE", "LOCAL_EPOCHS",
            "BATCH_SIZE", "LR", "TRAIN_PER_CLASS", "TEST_PER_CLASS", "PARTITION_SCHEME", "SERVER_DEVICE", "PUBLISH", "WEIGHTS_DIR",
            "CLIENT_DEVICE", "CLIENT_MAX_WAIT", "GPUS_PER_CLIENT", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "RESUME",
            "WAIT_TIMEOUT", "DASHBOARD_LINGER", "CPUS_LIMIT", "MEMORY_LIMIT", "LOG_MAX_SIZE", "LOG_MAX_FILES",
            "DASHBOARD_URL")
TINY = {"MODEL": "tiny_cnn", "WEIGHTS": "none", "TRAIN": "all", "IMAGE_SIZE": "0", "DATA": "synthetic:600", "ROUNDS": "2",
        "JOIN_GRACE": "3", "CLIENT_MAX_WAIT": "120"}
_projects = count(1)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def engine() -> None:
    """A running engine, or a skip that says why not."""
    reason = os.environ.get("FEDTL_DOCKER_UNAVAILABLE")  # set by .ci/run when engine.sh up failed there
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine: the docker command is not installed")
    if run("docker", "info", check=False, timeout=60).returncode != 0:
        if not ENGINE.exists():
            pytest.skip(f"no Docker engine running and no {ENGINE} to start one")
        result = run("bash", str(ENGINE), "up", check=False, timeout=900)
        if result.returncode != 0:
            tail = " | ".join((result.stderr + result.stdout).strip().splitlines()[-5:])
            pytest.skip(f"no Docker engine: {ENGINE.name} up failed: {tail}")
    if run("docker", "compose", "version", check=False).returncode != 0:
        pytest.skip("no Docker engine: the docker compose plugin is missing (engine.sh up installs it)")


def compose_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(TINY)
    env.update(FEDTL_IMAGE=IMAGE, PUBLISH=f"127.0.0.1:{free_port()}")
    env.update(settings)
    return env


@pytest.fixture(scope="session")
def image(engine: None) -> str:
    """Build the image once (seconds when the cache is warm)."""
    started = time.monotonic()
    run("docker", "compose", "build", env=compose_env(), timeout=1800)
    size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    print(f"\n[docker] image {IMAGE}: {size / 1e9:.2f} GB, compose build {time.monotonic() - started:.1f}s")
    return IMAGE


class Project:
    """One compose project: `docker compose -p NAME ...`, removed with its volumes at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"fedtl-test-{os.getpid()}-{next(_projects)}"
        self.env = env
        self.extra: list[list[str]] = []  # cleanup commands for things made outside compose

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return run("docker", "compose", "-p", self.name, "--ansi", "never", *args, env=self.env, check=check, timeout=timeout)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.name}-{service}-{index}"

    def containers(self) -> dict[str, dict]:
        out = self("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()] if not out.lstrip().startswith("[") else json.loads(out)
        return {row["Name"]: row for row in rows}

    def logs(self, service: str) -> str:
        out = self("logs", "--no-color", "--no-log-prefix", "--timestamps", service).stdout
        return ANSI.sub("", out)  # compose 2.26 erases lines (ESC[2K) even with --ansi never

    def wait_exit(self, container: str, timeout: float) -> int:
        try:
            return int(run("docker", "wait", container, timeout=timeout).stdout.strip())
        except subprocess.TimeoutExpired:
            tail = run("docker", "logs", "--tail", "60", container, check=False)
            logs = ANSI.sub("", tail.stdout + tail.stderr)
            server = self.logs("server")[-3000:] if container != self.container("server") else ""
            raise AssertionError(f"{container} still running after {timeout:.0f}s; its log:\n{logs}\nserver:\n{server}") from None

    def wait_all(self, timeout: float) -> dict[str, int]:
        """Exit code of every container of the project, once all have stopped."""
        deadline = time.monotonic() + timeout
        return {name: self.wait_exit(name, max(1.0, deadline - time.monotonic())) for name in self.containers()}

    def wait_for_log(self, service: str, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.logs(service), re.M)
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{service} did not log /{pattern}/ within {timeout}s:\n{self.logs(service)[-4000:]}")

    def volume_file(self, volume: str, path: str) -> str:
        return run("docker", "run", "--rm", "-v", f"{self.name}_{volume}:/v:ro", IMAGE, "cat", f"/v/{path}").stdout

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
        for command in self.extra:
            run(*command, check=False)


@pytest.fixture
def project(image: str) -> Iterator:
    made: list[Project] = []

    def make(**settings: str) -> Project:
        p = Project(compose_env(**settings))
        made.append(p)
        return p

    yield make
    for p in made:
        p.down()


def round_numbers(rounds_jsonl: str) -> list[int]:
    return [json.loads(line)["round"] for line in rounds_jsonl.splitlines() if line.strip()]


def test_image_runs_unprivileged_under_tini_without_build_tools(image: str) -> None:
    out = run("docker", "run", "--rm", image, "sh", "-c",
              "id -u; tr '\\0' ' ' < /proc/1/cmdline; echo; command -v gcc cc make || echo no-compiler; "
              "python -m server --help | head -1").stdout
    uid, pid1, compiler, usage = out.splitlines()[:4]
    assert uid == "10001" and pid1.startswith("tini") and compiler == "no-compiler" and "python -m server" in usage


@pytest.fixture(scope="module")
def scaled_run(image: str) -> Iterator[dict]:
    """`compose up --scale client=3` to the end of its run, and what test_compose_up_scale_3_completes_a_federation
    checks, read as it happens. Its project and volumes (a completed run) are where the second up of
    test_a_second_up_on_the_same_volumes_starts_a_new_run starts: one compose run fewer."""
    p = Project(compose_env())
    try:
        started = time.time()
        p("up", "-d", "--scale", "client=3", timeout=600)  # returns once the clients started: after the server turned healthy
        seen: dict = {"project": p, "started": started}
        seen["health"] = json.loads(run("docker", "inspect", "-f", "{{json .State.Health}}", p.container("server")).stdout)
        seen["client"] = {field: json.loads(run("docker", "inspect", "-f", field, p.container("client")).stdout)
                          for field in ("{{json .State.Health}}", "{{json .Config.ExposedPorts}}")}
        seen["codes"] = p.wait_all(300)
        seen["logs"], seen["server_log"] = p("logs").stdout[-4000:], p.logs("server")
        seen["rounds"] = p.volume_file("runs", "demo/rounds.jsonl")
        seen["tensors"] = run("docker", "run", "--rm", "-v", f"{p.name}_runs:/runs:ro", IMAGE, "python", "-c",
                              "from pathlib import Path; from common.checkpoint import load_tensors as l; "
                              "print(len(l(Path('/runs/demo/final_model.safetensors')).tensors))", check=False).stdout
        yield seen
    finally:
        p.down()


def test_compose_up_scale_3_completes_a_federation(scaled_run: dict) -> None:
    p: Project = scaled_run["project"]
    health = scaled_run["health"]
    assert any(entry["ExitCode"] == 0 and "SERVING" in entry["Output"] for entry in health["Log"]), health
    for field, value in scaled_run["client"].items():  # a client listens on nothing
        assert value in (None, {}), field
    codes = scaled_run["codes"]
    assert set(codes.values()) == {0}, (codes, scaled_run["logs"])
    assert sorted(codes) == sorted([p.container(s) for s in ("certs", "data", "server")] + [p.container("client", i) for i in (1, 2, 3)])

    log = scaled_run["server_log"]
    assert re.search(r"round 1/2 \| clients 3/3 \| train loss", log) and re.search(r"round 2/2 \| clients 3/3", log), log[-3000:]
    shards = re.search(r"training split divided into 3 iid partitions: (.*)", log)
    assert shards and sorted(s.rsplit("=", 1)[1] for s in shards.group(1).split(", ")) == ["0", "1", "2"], log[-3000:]
    assert "listening on 0.0.0.0:50051 with TLS" in log
    first = re.search(r"^(\S+) .*fedtl\.rounds: round 1/", log, re.M)
    assert first is not None
    stamp = datetime.fromisoformat(first.group(1)[:26].rstrip("Z") + "+00:00")  # RFC 3339 ns -> us
    print(f"\n[docker] compose up -> first round line: {stamp.timestamp() - scaled_run['started']:.1f}s")

    assert round_numbers(scaled_run["rounds"]) == [0, 1, 2]
    assert int(scaled_run["tensors"]) > 0


def test_the_dashboard_is_published_on_the_hosts_loopback_with_its_token(project) -> None:  # type: ignore[no-untyped-def]
    token = "compose-dashboard-token-0123"
    p: Project = project(DASHBOARD_LINGER="120", FEDTL_DASHBOARD_TOKEN=token)
    p("up", "-d", timeout=600)
    p.wait_for_log("server", r"the dashboard stays up", 300)
    host, port = p("port", "server", "8080").stdout.strip().rsplit(":", 1)
    assert host == "127.0.0.1"  # the host's loopback only
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/state")
    assert conn.getresponse().status == 401
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/state", headers={"Authorization": f"Bearer {token}"})
    state = json.loads(conn.getresponse().read())
    assert state["run"]["status"] == "completed" and [r["round"] for r in state["rounds"]] == round_numbers(
        p.volume_file("runs", "demo/rounds.jsonl"))
    assert "dashboard: http://localhost:8080/ (from this machine" in p.logs("server") and "docker compose port server 8080" in p.logs("server")
    p("stop", "-t", "10", "server")  # SIGTERM ends the linger at once
    assert p.wait_exit(p.container("server"), 30) == 0


def test_killed_server_container_resumes_from_the_checkpoint_in_its_volume(project) -> None:  # type: ignore[no-untyped-def]
    # Tiny rounds take a fraction of a second, and polling the log and pausing the clients takes about one:
    # with ROUNDS rounds the run cannot finish inside that window (CI once saw 6 rounds finish in it).
    rounds = 40
    p: Project = project(ROUNDS=str(rounds), CLIENTS="2")
    p("up", "-d", timeout=600)
    server = p.container("server")
    p.wait_for_log("server", rf"round 1/{rounds} \|", 180)
    p("pause", "client")  # freeze the clients so that the run cannot finish before the kill
    try:
        done = round_numbers(p.volume_file("runs", "demo/rounds.jsonl"))[-1]
        run("docker", "kill", server)  # SIGKILL: no goodbye, no final checkpoint
        assert p.wait_exit(server, 60) == 137
    finally:
        p("unpause", "client")
    assert 1 <= done < rounds, f"the run got to round {done} before the clients were paused; raise `rounds`"
    time.sleep(1)
    if run("docker", "inspect", "-f", "{{.State.Running}}", server).stdout.strip() != "true":
        p("start", "server")  # (restart: on-failure may have done it already)
    codes = p.wait_all(300)
    assert set(codes.values()) == {0}, (codes, p("logs").stdout[-4000:])
    log = p.logs("server")
    assert re.search(rf"resuming run \w+ after round {done}/{rounds}", log), log[-4000:]
    assert re.search(rf"round {done + 1}/{rounds} \| clients 2/2", log) and f"round {rounds}/{rounds} | clients 2/2" in log, log[-4000:]
    print(f"\n[docker] killed after round {done}/{rounds}; resumed to the end")
    assert round_numbers(p.volume_file("runs", "demo/rounds.jsonl")) == list(range(rounds + 1)), "each round exactly once, in order"


def test_remote_client_joins_through_the_published_port_with_tls_and_a_token(project, tmp_path: Path) -> None:  # type: ignore
    token, port = secrets.token_hex(24), free_port()
    # the server waits for 3 clients: 2 from compose and one "on another machine"
    p: Project = project(FEDTL_TOKEN=token, SERVER_NAMES="fedtl-server", PUBLISH=f"{port}", CLIENTS="3")
    network = f"{p.name}-remote"
    run("docker", "network", "create", network)
    p.extra += [["docker", "rm", "-f", f"{p.name}-remote-1", f"{p.name}-intruder"], ["docker", "network", "rm", network]]
    p("up", "-d", "--scale", "client=2", timeout=600)
    p("cp", "server:/certs/ca.pem", str(tmp_path / "ca.pem"))  # what the coordinator hands to remote sites

    def remote(name: str, with_token: str) -> list[str]:
        return ["docker", "run", "--rm", "--name", f"{p.name}-{name}", "--network", network, "--add-host", "fedtl-server:host-gateway",
                "-v", f"{tmp_path / 'ca.pem'}:/certs/ca.pem:ro", "-e", f"FEDTL_TOKEN={with_token}", IMAGE,
                "client", "--server", f"fedtl-server:{port}", "--ca-cert", "/certs/ca.pem", "--name", name,
                "--data", "synthetic:600", "--max-wait", "120"]

    # that network cannot see the compose network: only the published port leads to the server
    lookup = run("docker", "run", "--rm", "--network", network, IMAGE, "python", "-c", "import socket; socket.gethostbyname('server')",
                 check=False)
    assert lookup.returncode != 0
    intruder = run(*remote("intruder", "not-the-token-" + "x" * 10), check=False, timeout=300)
    assert intruder.returncode == 3 and "wrong token" in intruder.stdout + intruder.stderr, intruder.stderr[-3000:]
    joined = run(*remote("remote-1", token), check=False, timeout=300)
    logs = joined.stdout + joined.stderr
    assert joined.returncode == 0, logs[-4000:]
    assert "(TLS)" in logs and "round 1: sent" in logs and "round 2: sent" in logs

    codes = p.wait_all(120)
    assert set(codes.values()) == {0}, (codes, p("logs").stdout[-4000:])
    server_log = p.logs("server")
    assert "client remote-1 connected" in server_log and "tokens required" in server_log
    assert "partitions: " in server_log and "remote-1=" in server_log
    records = [json.loads(line) for line in p.volume_file("runs", "demo/rounds.jsonl").splitlines()]
    assert all("remote-1" in r["clients"] and len(r["clients"]) == 3 for r in records[1:])
    assert all("intruder" not in r["clients"] for r in records)


def test_a_remote_site_rides_out_a_hard_restart_of_the_coordinators_container(project, tmp_path: Path) -> None:  # type: ignore
    """While the coordinator's container restarts, Docker's port proxy accepts and resets a remote site's connections: the
    site read that as a certain TLS error and exited 3, lost for good. It must retry, rejoin the resumed run and finish."""
    token, port = secrets.token_hex(24), free_port()
    p: Project = project(FEDTL_TOKEN=token, SERVER_NAMES="fedtl-server", PUBLISH=f"{port}", CLIENTS="1", ROUNDS="12")
    p.extra += [["docker", "rm", "-f", f"{p.name}-site"]]
    p("up", "-d", "--wait", "server", timeout=600)
    p("cp", "server:/certs/ca.pem", str(tmp_path / "ca.pem"))
    site = subprocess.Popen(["docker", "run", "--rm", "--name", f"{p.name}-site", "--add-host", "fedtl-server:host-gateway",
                             "-v", f"{tmp_path / 'ca.pem'}:/certs/ca.pem:ro", "-e", f"FEDTL_TOKEN={token}", IMAGE,
                             "client", "--server", f"fedtl-server:{port}", "--ca-cert", "/certs/ca.pem", "--name", "site",
                             "--data", "synthetic:600", "--max-wait", "300"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.wait_for_log("server", r"round 2/12 \|", 300)
        run("docker", "kill", p.container("server"))
        p("up", "-d", "server", timeout=600)  # what compose's own restart does: the same volumes, the run resumes
        out, _ = site.communicate(timeout=600)
    finally:
        if site.poll() is None:
            site.kill()
    assert site.returncode == 0, out[-4000:]
    assert "waiting for the server" in out and "TLS handshake" not in out, out[-4000:]
    print("\n[docker] the site while the coordinator restarted:", *sorted({line.split(": ", 2)[-1][:90] for line in out.splitlines()
                                                                          if "waiting for the server" in line}), sep="\n  ")
    server = p.logs("server")
    assert "resuming run" in server and "round 12/12 |" in server, server[-3000:]


def test_compose_down_stops_a_running_federation_at_once(project) -> None:  # type: ignore[no-untyped-def]
    p: Project = project(ROUNDS="1000", CLIENTS="2", LOCAL_EPOCHS="3")
    p("up", "-d", timeout=600)
    p.wait_for_log("server", r"round 1/1000 \|", 180)
    started = time.monotonic()
    server_log_before = p.logs("server")
    p("down", "-v")  # SIGTERM through tini: no 10 s wait for a SIGKILL (the time is printed, not asserted)
    print(f"\n[docker] compose down of a running federation: {time.monotonic() - started:.1f}s")
    assert not p.containers() and "round 1/1000 |" in server_log_before


def test_a_second_up_on_the_same_volumes_starts_a_new_run(scaled_run: dict) -> None:
    """Even with other settings (the README's order: the default `up`, then another line): it used to be refused, in a
    restart loop, with flags compose does not expose."""
    p: Project = scaled_run["project"]  # a completed run is on its volumes
    assert set(scaled_run["codes"].values()) == {0}, (scaled_run["codes"], scaled_run["logs"])
    p.env = {**p.env, "LR": "0.01"}
    p("up", "-d", timeout=600)
    codes = p.wait_all(300)
    assert set(codes.values()) == {0}, (codes, p("logs").stdout[-4000:])
    assert "holds a run with other settings (train.lr: 0.003 -> 0.01): a new run starts" in p.logs("server")
    assert round_numbers(p.volume_file("runs", "demo/rounds.jsonl")) == [0, 1, 2]  # the second run's own log
    kept = run("docker", "run", "--rm", "-v", f"{p.name}_runs:/runs:ro", IMAGE, "sh", "-c", "ls /runs/demo/previous/*/").stdout
    assert "final_model.safetensors" in kept and "rounds.jsonl" in kept, kept


def test_the_readme_remote_client_recipe_works_as_written(image: str, tmp_path: Path) -> None:
    """The README's lines, run in order in a shell; only /srv/our-images becomes a folder of the demo's classes, and the
    published port 50051 a free one (the suite runs in parallel: another test may hold the host's 50051)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("A client on another machine:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    images = tmp_path / "site"
    for i in range(10):  # the default DATA (synthetic) has classes class0..class9; a site's folders must match by name
        folder = images / "train" / f"class{i}"
        folder.mkdir(parents=True)
        for j in range(6):
            (folder / f"{j}.ppm").write_bytes(b"P6 8 8 255\n" + bytes([(25 * i + j) % 256]) * 192)
    assert block.count("50051") == 2, block
    script = block.replace("/srv/our-images", str(images)).replace("50051", str(free_port()))
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    name = ROOT.name  # the project compose takes from the folder, as for a user
    run("docker", "compose", "down", "-v", env=env, check=False)
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-4000:]
        assert "round 3: sent" in out and "run is over" in out, out[-3000:]
        server = run("docker", "compose", "logs", "--no-color", "server", env=env).stdout
        assert "client hospital-a connected" in server and "round 3/3 | clients 1/1" in server, server[-3000:]
    finally:
        run("docker", "compose", "down", "-v", env=env, check=False)
        run("docker", "volume", "rm", "-f", "hospital-a", check=False)  # the site's identity volume the recipe made
        (ROOT / "ca.pem").unlink(missing_ok=True)  # the recipe copies it into the working folder
        print(f"\n[docker] README recipe ran as project {name}")


def test_compose_standing_mode_keeps_its_sites_between_submitted_jobs(project) -> None:  # type: ignore[no-untyped-def]
    """docker-compose.standing.yml as its header says: the sites stay up, jobs are submitted inside the server container."""
    p: Project = project(CLIENTS="2", FEDTL_OPERATOR_TOKEN="compose-operator-token-0123456789")
    standing = ["-f", "docker-compose.yml", "-f", "docker-compose.standing.yml"]
    p(*standing, "up", "-d", "--wait", timeout=600)
    p.wait_for_log("server", r"site \S+ connected \(2 connected\)", 120)
    for rounds in ("1", "2"):
        submitted = p(*standing, "exec", "-T", "server", "fedtl", "submit", "--", "--rounds", rounds)
        job = submitted.stdout.split()[-1]
        log = p(*standing, "exec", "-T", "server", "fedtl", "logs", job, "-f", timeout=300).stdout
        assert f"done: run complete after {rounds} rounds" in log, log[-3000:]
    states = {name: row["State"] for name, row in p.containers().items() if "-client-" in name}
    assert list(states.values()) == ["running", "running"], states  # the same sites, still connected
    assert p.logs("client").count("staying for the next job") == 4
    p(*standing, "stop", "-t", "10")
