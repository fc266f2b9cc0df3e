"""`python -m server.healthcheck`: exit 0 when the server's standard gRPC health service answers SERVING.

Speaks grpc.health.v1 (the protocol of grpc_health_probe and Kubernetes' gRPC probes), which the server
serves without a token. Defaults come from FEDTL_HEALTH_* variables, so a container's HEALTHCHECK needs
no flags: FEDTL_HEALTH_ADDRESS (127.0.0.1:50051), FEDTL_HEALTH_CA_CERT (set it when the server uses TLS),
FEDTL_HEALTH_SERVER_NAME (name expected in the server certificate; python -m server.certs always
includes localhost), FEDTL_HEALTH_TLS_CERT/FEDTL_HEALTH_TLS_KEY (a client certificate, under mutual TLS).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m server.healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=env("FEDTL_HEALTH_ADDRESS", "127.0.0.1:50051"), help="HOST:PORT of the server")
    p.add_argument("--service", default="", help="service to ask about ('' = the whole server, or fedtl.v1.Federation)")
    p.add_argument("--ca-cert", type=Path, default=env("FEDTL_HEALTH_CA_CERT") or None, help="CA certificate: use TLS")
    p.add_argument("--server-name", default=env("FEDTL_HEALTH_SERVER_NAME") or None, help="name expected in the server certificate")
    p.add_argument("--tls-cert", type=Path, default=env("FEDTL_HEALTH_TLS_CERT") or None, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=env("FEDTL_HEALTH_TLS_KEY") or None)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.ca_cert is not None:
        creds = grpc.ssl_channel_credentials(
            a.ca_cert.read_bytes(),
            a.tls_key.read_bytes() if a.tls_key else None,
            a.tls_cert.read_bytes() if a.tls_cert else None,
        )
        options = [("grpc.ssl_target_name_override", a.server_name)] if a.server_name else []
        channel = grpc.secure_channel(a.address, creds, options=options)
    else:
        channel = grpc.insecure_channel(a.address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=a.service), timeout=a.timeout)
        except grpc.RpcError as exc:
            print(f"{a.address}: not healthy: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{a.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
