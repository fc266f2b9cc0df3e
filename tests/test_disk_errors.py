"""A disk that refuses a write (full, read-only, not ours) stops the run with one line naming the path and what it needs,
and the waiting clients are told why instead of retrying for --max-wait. A real server and clients over gRPC in this
process (tests/inprocess_federation.py); the full disk is the checkpoint writer's call failing with ENOSPC."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from fedtl.common import checkpoint
from fedtl.common.cli import describe_failure, run_reporting

SERVER = ["--model", "tiny_cnn", "--weights", "none", "--data", "synthetic:200", "--batch-size", "32", "--join-grace", "0",
          "--finish-grace", "5", "--rounds", "3", "--min-clients", "2"]
CLIENT = ["--data", "synthetic:200"]


def test_a_full_disk_stops_the_run_in_one_line_and_the_clients_are_told(inprocess_federation, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    write = checkpoint.write_bytes_atomic

    def full_after_round_1(path: Path, data: bytes) -> None:
        if path.suffix == ".safetensors" and (path.parent / "rounds.jsonl").exists() and \
                '"round": 1' in (path.parent / "rounds.jsonl").read_text():  # round 1 logged: its checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(checkpoint, "write_bytes_atomic", full_after_round_1)
    fed = inprocess_federation(SERVER)
    fed.start_server()
    clients = [fed.start_client(name, CLIENT) for name in ("a", "b")]
    assert fed.server.wait(180) == 2, fed.server.log[-3000:]
    said = [line for line in fed.server.log.splitlines() if "the disk is full at" in line]
    assert said and "free space there, or point --run-dir" in said[-1] and "internal error" not in fed.server.log
    assert str(fed.folder) in said[-1], "the line names the path"
    for client in clients:
        assert client.wait(60) != 0, "told the run failed, it stops at once (not --max-wait later)"
        assert "the server stopped on an error: the disk is full at" in client.log, client.log[-2000:]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full at /r/x: free space there"),
                                         (errno.EROFS, "the file system is read-only at /r/x: make it writable"),
                                         (errno.EACCES, "permission denied at /r/x: make it writable")])
def test_disk_refusals_are_one_line_and_exit_2_and_other_os_errors_stay_bugs(code: int, words: str, caplog) -> None:  # type: ignore[no-untyped-def]
    def fail() -> int:
        raise OSError(code, "refused", "/r/x")

    with caplog.at_level(logging.ERROR):
        assert run_reporting(fail, "server") == 2
    assert words in caplog.text and "internal error" not in caplog.text
    assert " at a file under the run folder: " in describe_failure(OSError(code, "refused")), "a write on an open file names no path"

    def other() -> int:
        raise OSError(errno.ECONNRESET, "reset")

    assert run_reporting(other, "server") == 70
