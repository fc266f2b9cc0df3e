"""Another machine, for plain processes: the server and each client in their own network namespace.

Each client namespace is joined to the server's by a veth pair with addresses of this test's choosing
(198.18.0.0/15, the range set aside for network tests; nothing outside these namespaces sees it). A
client reaches the server only across its link, by IP address, with TLS (the certificate names those
IPs) and a token: what a client on another machine does. Needs root (or CAP_NET_ADMIN) and `ip netns`;
skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ENV, ROOT

from fedtl.server import certs

pytestmark = pytest.mark.multiprocess
TOKEN = "netns-token-" + "n" * 20
TINY = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:300", "--join-grace", "1", "--finish-grace", "5",
        "--wait-timeout", "120", "--rounds", "2", "--min-clients", "2"]
LINKS = {"c1": ("198.18.1.1", "198.18.1.2"), "c2": ("198.18.2.1", "198.18.2.2")}  # client -> (server side, client side)


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """{'server': ns, 'c1': ns, 'c2': ns}, linked server<->client by veth pairs; removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("network namespaces: the `ip` command (iproute2) is not installed")
    tag = f"fedtl{os.getpid() % 100000}"
    names = {"server": f"{tag}-srv", **{c: f"{tag}-{c}" for c in LINKS}}
    made: list[str] = []
    try:
        for ns in names.values():
            result = ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"network namespaces not allowed here: `ip netns add` said: {result.stderr.strip()}")
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for client, (server_ip, client_ip) in LINKS.items():
            a, b = f"{tag}s{client}", f"{tag}{client}"  # interface names, at most 15 characters
            steps = [
                ("link", "add", a, "netns", names["server"], "type", "veth", "peer", "name", b, "netns", names[client]),
                ("-n", names["server"], "addr", "add", f"{server_ip}/30", "dev", a),
                ("-n", names[client], "addr", "add", f"{client_ip}/30", "dev", b),
                ("-n", names["server"], "link", "set", a, "up"),
                ("-n", names[client], "link", "set", b, "up"),
            ]
            for step in steps:
                result = ip(*step)
                if result.returncode != 0:
                    pytest.skip(f"cannot set up the veth link (ip {' '.join(step)}): {result.stderr.strip()}")
        yield names
    finally:
        for ns in made:
            ip("netns", "del", ns)


class NsProc:
    def __init__(self, ns: str, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.popen = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], cwd=ROOT, env=ENV,
                                      stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"{self.log_path.name} did not exit within {timeout}s:\n{self.log[-4000:]}") from None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._log.close()


def test_rounds_complete_between_network_namespaces_over_tls(namespaces: dict[str, str], tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    server_ips = [server_ip for server_ip, _ in LINKS.values()]
    assert certs.main(["--out", str(pki), "--server-name", ",".join(server_ips)]) == 0
    procs: list[NsProc] = []
    try:
        # the client namespaces see nothing but their own link: not the server's side of the other link
        other = ip("netns", "exec", namespaces["c1"], "ip", "-4", "route", "get", LINKS["c2"][0])
        assert other.returncode != 0, f"c1 should have no route to c2's link: {other.stdout}"
        server = NsProc(namespaces["server"], ["-m", "server", "--address", "0.0.0.0:50051", "--run-dir", str(tmp_path / "run"),
                                               "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                                               "--token", TOKEN, *TINY], tmp_path / "server.log")
        procs.append(server)
        deadline = time.monotonic() + 60
        while "listening on" not in server.log:
            assert server.popen.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.1)
        for client, (server_ip, _) in LINKS.items():
            procs.append(NsProc(namespaces[client], ["-m", "client", "--server", f"{server_ip}:50051", "--name", client,
                                                     "--ca-cert", str(pki / "ca.pem"), "--token", TOKEN, "--data", "synthetic:300",
                                                     "--workdir", str(tmp_path / client), "--threads", "1", "--max-wait", "60"],
                                tmp_path / f"{client}.log"))
        assert server.wait(120) == 0, server.log
        for proc in procs[1:]:
            assert proc.wait(30) == 0, proc.log
            assert "round 2: sent" in proc.log
        assert "round 2/2 | clients 2/2" in server.log
        assert "client c1 connected" in server.log and "client c2 connected" in server.log
    finally:
        for proc in procs:
            proc.close()
