"""`fedtl submit | ls | logs | stop`: an operator's commands for a standing coordinator (docs/jobs.md).

    fedtl submit [JOB.toml] [-- SERVER FLAGS...]   queue a job; its id is the last word printed
    fedtl ls                                      jobs and their state
    fedtl logs JOB [-f]                           the job's log (its own lines and its rounds), following with -f
    fedtl stop JOB                                stop a queued or running job

Each takes --server HOST:PORT, --operator-token (or FEDTL_OPERATOR_TOKEN) and, over TLS, --ca-cert (or
FEDTL_OPERATOR_CA_CERT) and --tls-server-name (or FEDTL_OPERATOR_SERVER_NAME).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from fedtl.common import wire_jobs
from fedtl.common.cli import HelpFormatter, Parser
from fedtl.common.jobs import JobStatus
from fedtl.protos import federation_pb2 as pb
from fedtl.protos import federation_pb2_grpc as pb_grpc

TOKEN_ENV = "FEDTL_OPERATOR_TOKEN"
CA_ENV, NAME_ENV = "FEDTL_OPERATOR_CA_CERT", "FEDTL_OPERATOR_SERVER_NAME"  # the Docker image sets them in the standing server
CALL_TIMEOUT = 60.0


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"fedtl {command}", description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of the standing coordinator")
    p.add_argument("--operator-token", default=None, help=f"the operator's token (or {TOKEN_ENV})")
    ca, name = os.environ.get(CA_ENV), os.environ.get(NAME_ENV)
    p.add_argument("--ca-cert", type=Path, default=Path(ca) if ca else None, help=f"CA certificate that signed the coordinator's "
                   f"(enables TLS; or {CA_ENV})")
    p.add_argument("--tls-cert", type=Path, default=None, help="the operator's client certificate (mutual TLS; instead of the token)")
    p.add_argument("--tls-key", type=Path, default=None, help="its private key")
    p.add_argument("--tls-server-name", default=name or None, help=f"expected name in the coordinator's certificate (default: the "
                   f"host; or {NAME_ENV})")
    return p


def parser_for(command: str) -> argparse.ArgumentParser:
    """Each command's flags (tests/test_doc_blocks.py checks the docs' commands with them)."""
    if command == "submit":
        p = _parser("submit", "Queue a job on a standing coordinator: `fedtl server` flags after --, and/or a job file (TOML). "
                              "--kind statistics asks each site for its example and label counts (--statistics-epsilon: with DP noise).")
        p.add_argument("job_file", nargs="?", type=Path, help="the job as a TOML file (the same keys as `fedtl server --config`)")
        return p
    if command == "ls":
        return _parser("ls", "List a standing coordinator's jobs and their state.")
    if command == "logs":
        p = _parser("logs", "Print a job's log: its own lines (offers, refusals, end) and its rounds, in time order.")
        p.add_argument("job_id")
        p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
        return p
    p = _parser("stop", "Stop a queued or running job (a running one ends after its current round is checkpointed).")
    p.add_argument("job_id")
    return p


def _stub(a: argparse.Namespace) -> tuple[pb_grpc.OperatorStub, list[tuple[str, str]]]:
    token = a.operator_token or os.environ.get(TOKEN_ENV) or ""
    if a.tls_cert is not None and a.ca_cert is None:
        raise SystemExit("error: --tls-cert (mutual TLS) needs --ca-cert to verify the coordinator too")
    if a.ca_cert is not None:
        options = [("grpc.ssl_target_name_override", a.tls_server_name)] if a.tls_server_name else []
        if (a.tls_cert is None) != (a.tls_key is None):
            raise SystemExit("error: --tls-cert and --tls-key go together")
        try:
            ca, key, cert = (p.read_bytes() if p is not None else None for p in (a.ca_cert, a.tls_key, a.tls_cert))
        except OSError as exc:
            raise SystemExit(f"error: {exc.filename}: cannot read it ({exc.strerror or exc})") from None
        channel = grpc.secure_channel(a.server, grpc.ssl_channel_credentials(ca, key, cert), options=options)
    else:
        channel = grpc.insecure_channel(a.server)
    return pb_grpc.OperatorStub(channel), [("authorization", f"Bearer {token}")] if token else []


def _calling(call: Callable[[], int], server: str) -> int:
    try:
        return call()
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"nothing answers at {server}: is the standing coordinator running, and --server right?"
        else:
            hint = " (is the coordinator started with --standing?)" if code == grpc.StatusCode.UNIMPLEMENTED else ""
            message = f"{exc.details() or code.name}{hint}"
        print(f"error: {message}", file=sys.stderr)
        return 2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 3 if code == grpc.StatusCode.UNAUTHENTICATED else 4


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _describe(s: JobStatus) -> str:
    return f"{s.job_id}  {s.kind:<10} {s.state:<8} submitted {_when(s.submitted)}  {s.detail}".rstrip()


def submit(argv: list[str]) -> int:
    own, job_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = parser_for("submit").parse_args(own)
    toml = ""
    if a.job_file is not None:
        try:
            toml = a.job_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: {a.job_file}: cannot read it ({exc})", file=sys.stderr)
            return 2
    stub, metadata = _stub(a)

    def call() -> int:
        status = wire_jobs.status_from_proto(stub.Submit(pb.JobSubmission(flags=job_flags, toml=toml), metadata=metadata, timeout=CALL_TIMEOUT))
        print(f"queued {status.kind} job; folder {status.folder}; `fedtl logs {status.job_id} -f` follows it\n{status.job_id}")
        return 0

    return _calling(call, a.server)


def ls(argv: list[str]) -> int:
    a = parser_for("ls").parse_args(argv)
    stub, metadata = _stub(a)

    def call() -> int:
        jobs = [wire_jobs.status_from_proto(s) for s in stub.List(pb.JobListRequest(), metadata=metadata, timeout=CALL_TIMEOUT).jobs]
        print("\n".join(_describe(s) for s in jobs) if jobs else "no jobs yet (fedtl submit queues one)")
        return 0

    return _calling(call, a.server)


def logs(argv: list[str]) -> int:
    a = parser_for("logs").parse_args(argv)
    stub, metadata = _stub(a)

    def call() -> int:
        for line in stub.Logs(pb.JobLogsRequest(job_id=a.job_id, follow=a.follow), metadata=metadata):
            print(line.line, flush=True)
        return 0

    return _calling(call, a.server)


def stop(argv: list[str]) -> int:
    a = parser_for("stop").parse_args(argv)
    stub, metadata = _stub(a)

    def call() -> int:
        status = wire_jobs.status_from_proto(stub.Stop(pb.JobRef(job_id=a.job_id), metadata=metadata, timeout=CALL_TIMEOUT))
        print(f"{status.job_id}: {'stopped' if status.state == 'stopped' else 'stopping'}")
        return 0

    return _calling(call, a.server)
