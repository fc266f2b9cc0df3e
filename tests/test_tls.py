"""TLS, mutual TLS and tokens with real processes on 127.0.0.1 (tiny model, synthetic data, seconds).

Certificates come from `python -m server.certs`; a second, unrelated CA plays the attacker's.
Clients that present the wrong CA, no client certificate under mTLS, or a wrong token must be
refused with a message that says what to fix, while the federation goes on with the others.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Federation, Proc

from fedtl.server import certs, healthcheck

TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:300", "--join-grace", "1", "--finish-grace", "5",
        "--wait-timeout", "120", "--rounds", "2", "--min-clients", "2"]
DATA = ["--data", "synthetic:300"]
SHARED = "shared-token-" + "s" * 20
pytestmark = pytest.mark.multiprocess  # TLS handshakes between real processes

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    assert certs.main(["--out", str(out), "--server-name", "localhost", "--client", "alice", "--client", "bob", "--client", "carol"]) == 0
    return out


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA with a server name and client names that look right: trust must come from the CA, not the names."""
    out = tmp_path_factory.mktemp("other-pki")
    assert certs.main(["--out", str(out), "--server-name", "localhost", "--client", "alice"]) == 0
    return out


def tokens(pki: Path) -> dict[str, str]:
    return dict(line.split() for line in (pki / "tokens.txt").read_text().splitlines())


def refused_in_log(log: str, name: str) -> bool:
    """The server logged that it refused this client (a warning line naming it)."""
    return any("refused" in line and name in line for line in log.splitlines())


def exit_code_within(proc: Proc, seconds: float) -> int | None:
    """The client's exit code, or None if it was still running after `seconds` (then it is killed)."""
    try:
        return proc.popen.wait(timeout=max(0.0, seconds))
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def test_tls_federation_with_a_shared_token(federation, pki: Path) -> None:  # type: ignore[no-untyped-def]
    ca = str(pki / "ca.pem")
    fed: Federation = federation([*TINY, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--token", SHARED])
    fed.start_server()
    address = f"127.0.0.1:{fed.port}"
    fed.server.wait_for("with TLS, tokens required")
    assert "INSECURE" not in fed.server.log
    # the standard health service answers over TLS, without a token; plaintext gets nothing
    assert healthcheck.main(["--address", address, "--ca-cert", ca]) == 0
    assert healthcheck.main(["--address", address, "--timeout", "2"]) == 1

    intruder = fed.start_client("intruder", [*DATA, "--ca-cert", ca, "--token", "not-the-token-at-all"])
    anonymous = fed.start_client("anonymous", [*DATA, "--ca-cert", ca])
    good = [fed.start_client(f"ok{i}", [*DATA, "--ca-cert", ca, "--token", SHARED]) for i in range(2)]

    assert exit_code_within(intruder, 60) == 3, intruder.log
    assert "wrong token for client 'intruder'" in intruder.log and "--token" in intruder.log
    assert exit_code_within(anonymous, 60) == 3, anonymous.log
    assert "requires a token" in anonymous.log
    assert fed.server.wait(120) == 0, fed.server.log
    assert all(c.wait(30) == 0 for c in good)
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients"] == ["ok0", "ok1"] for r in rounds[1:]), "refused clients must never reach aggregation"
    assert refused_in_log(fed.server.log, "intruder") and refused_in_log(fed.server.log, "anonymous")
    assert "client intruder connected" not in fed.server.log and "client anonymous connected" not in fed.server.log


@pytest.fixture(scope="module")
def mtls_run(tmp_path_factory: pytest.TempPathFactory, pki: Path, other_pki: Path) -> Iterator[dict]:
    """One mTLS server with per-client tokens. alice connects, three bad clients try while the server waits for a
    second client, then bob joins and the run completes."""
    ca = str(pki / "ca.pem")
    tok = tokens(pki)

    def mine(name: str) -> list[str]:
        return ["--tls-cert", str(pki / f"client-{name}.pem"), "--tls-key", str(pki / f"client-{name}.key")]

    fed = Federation(tmp_path_factory.mktemp("mtls"), [*TINY, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                                                       "--tls-client-ca", ca, "--tokens-file", str(pki / "tokens.txt")])
    try:
        fed.start_server()
        fed.server.wait_for("client certificates (mTLS)")
        address = f"127.0.0.1:{fed.port}"
        health = {
            "with a client certificate": healthcheck.main(["--address", address, "--ca-cert", ca, *mine("alice")]),
            "without one": healthcheck.main(["--address", address, "--ca-cert", ca, "--timeout", "2"]),
        }
        alice = fed.start_client("alice", [*DATA, "--ca-cert", ca, *mine("alice"), f"--token={tok['alice']}"])
        bad = {
            # a server certificate from another CA, with the right name in it
            "wrong-ca": fed.start_client("wrong-ca", [*DATA, "--ca-cert", str(other_pki / "ca.pem"), "--tls-cert",
                                                      str(other_pki / "client-alice.pem"), "--tls-key", str(other_pki / "client-alice.key"),
                                                      f"--token={tok['alice']}", "--max-wait", "20"]),
            # the right CA, but no client certificate
            "no-cert": fed.start_client("no-cert", [*DATA, "--ca-cert", ca, f"--token={tok['alice']}", "--max-wait", "20"]),
            # a good certificate, but bob's token under carol's name
            "carol": fed.start_client("carol", [*DATA, "--ca-cert", ca, *mine("carol"), f"--token={tok['bob']}"]),
            # carol's token, under carol's name, but with alice's certificate: the certificate names the client too
            "carol-as-alice": fed.start_client("carol-as-alice", [*DATA, "--ca-cert", ca, *mine("alice"), f"--token={tok['carol']}",
                                                                  "--name", "carol"]),
        }
        alice.wait_for("joined run", 60)
        # A refused client exits by itself (code 3) as soon as it is refused; one that was not would wait for the run
        # (up to its --max-wait, then code 4). The bound only ends the test if that broke: ample for a busy machine.
        deadline = time.monotonic() + 120
        outcomes = {name: exit_code_within(proc, deadline - time.monotonic()) for name, proc in bad.items()}
        bob = fed.start_client("bob", [*DATA, "--ca-cert", ca, *mine("bob"), f"--token={tok['bob']}"])
        server_code = fed.server.wait(120)
        yield {"fed": fed, "health": health, "outcomes": outcomes, "bad": bad, "server": server_code,
               "good": {"alice": alice.wait(30), "bob": bob.wait(30)}}
    finally:
        fed.close()


def test_mtls_federation_with_per_client_tokens_completes_despite_bad_clients(mtls_run: dict) -> None:
    fed: Federation = mtls_run["fed"]
    assert mtls_run["server"] == 0, fed.server.log
    assert mtls_run["good"] == {"alice": 0, "bob": 0}
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients"] == ["alice", "bob"] for r in rounds[1:]), "refused clients must never reach aggregation"
    assert "first come, first served" not in fed.server.log, "names are bound to credentials here: no such warning"
    for name in ("wrong-ca", "no-cert", "carol"):
        assert f"client {name} connected" not in fed.server.log


def test_a_client_certificate_is_bound_to_its_name(mtls_run: dict) -> None:
    proc: Proc = mtls_run["bad"]["carol-as-alice"]
    assert mtls_run["outcomes"]["carol-as-alice"] == 3, proc.log[-3000:]
    assert "certificate is for 'alice', not 'carol'" in proc.log


def test_health_check_under_mtls_needs_a_client_certificate(mtls_run: dict) -> None:
    assert mtls_run["health"] == {"with a client certificate": 0, "without one": 1}


def test_a_wrong_token_is_refused_with_a_clear_error(mtls_run: dict) -> None:
    carol: Proc = mtls_run["bad"]["carol"]
    assert mtls_run["outcomes"]["carol"] == 3, carol.log
    assert "wrong token for client 'carol'" in carol.log
    assert refused_in_log(mtls_run["fed"].server.log, "carol")


def test_a_client_with_the_wrong_ca_is_refused_with_a_clear_error(mtls_run: dict) -> None:
    proc: Proc = mtls_run["bad"]["wrong-ca"]
    assert mtls_run["outcomes"]["wrong-ca"] == 3, proc.log[-3000:]
    assert "--ca-cert" in proc.log


def test_a_client_without_a_certificate_under_mtls_is_refused_with_a_clear_error(mtls_run: dict) -> None:
    proc: Proc = mtls_run["bad"]["no-cert"]
    assert mtls_run["outcomes"]["no-cert"] == 3, proc.log[-3000:]
    assert "--tls-cert" in proc.log


@pytest.mark.parametrize("server_tls, client_args, code, says", [
    (True, [], 3, "uses TLS and this client does not: start it with --ca-cert"),
    (False, ["--ca-cert", "{pki}/ca.pem"], 3, "does not use TLS (it answered in plaintext)"),
])
def test_tls_on_one_side_only_fails_at_once_naming_the_flag(federation, pki: Path, server_tls: bool, client_args: list[str],
                                                            code: int, says: str) -> None:  # type: ignore[no-untyped-def]
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")] if server_tls else []
    fed: Federation = federation([*TINY, *tls])
    fed.start_server()
    proc = fed.start_client("alice", [*DATA, *[a.format(pki=pki) for a in client_args]], server=f"localhost:{fed.port}")
    assert exit_code_within(proc, 60) == code, proc.log[-3000:]
    assert says in proc.log and proc.log.count("waiting for the server") == 0, proc.log[-3000:]
    assert "ssl_transport_security" not in fed.server.log  # gRPC's raw handshake lines stay out of the server's log


def test_a_host_name_that_does_not_resolve_ends_the_client_with_exit_4(federation) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = federation(TINY)
    fed.start_server()
    proc = fed.start_client("alice", DATA, server=f"localhst:{fed.port}")
    assert exit_code_within(proc, 60) == 4, proc.log[-3000:]
    assert "cannot resolve the host in --server localhst" in proc.log


def test_a_connection_reset_during_the_handshake_is_a_server_restarting_not_a_tls_error(federation, pki: Path) -> None:  # type: ignore[no-untyped-def]
    """Docker's port proxy accepts and resets while the coordinator's container restarts: the client must keep retrying
    (it exited 3 with a 'TLS handshake failed' on the first reset, and a remote site was lost for good)."""
    import socket
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def reset_everyone() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset, as the proxy does
            conn.close()

    thread = threading.Thread(target=reset_everyone, daemon=True)
    thread.start()
    try:
        fed: Federation = federation(TINY)
        proc = fed.start_client("alice", [*DATA, "--ca-cert", str(pki / "ca.pem"), "--max-wait", "4"], server=f"localhost:{port}")
        assert exit_code_within(proc, 120) == 4, proc.log[-3000:]  # gave up after --max-wait: retried, never refused
        assert "was reset (a server starting or stopping?)" in proc.log and "TLS handshake" not in proc.log, proc.log[-3000:]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
