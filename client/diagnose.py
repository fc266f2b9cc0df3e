"""When a connection fails in a way gRPC reports vaguely ("Socket closed"), look at the server directly.

One TCP connection and one TLS handshake with Python's ssl module tell apart what retrying can cure
(the server is down or restarting: the connection is refused or reset) from what it cannot (the server
speaks TLS to a plaintext client, or wants a client certificate). Verification is off: this only asks
what the server speaks; the real channel verifies everything.
"""

from __future__ import annotations

import enum
import socket
import ssl


class Finding(enum.Enum):
    UNREACHABLE = "unreachable"  # refused, reset or silent: retry
    TLS = "tls"  # completes a TLS handshake
    CLIENT_CERT_REQUIRED = "client certificate required"  # a TLS server that refuses clients without a certificate
    PLAINTEXT = "plaintext"  # answers, but not with TLS


def probe(host: str, port: int, timeout: float = 5.0) -> Finding:
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return Finding.UNREACHABLE
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            # A gRPC server opens with its HTTP/2 settings. Under TLS 1.3 one that wants a client certificate
            # completes the handshake, then refuses (an alert, or just hanging up).
            try:
                tls.settimeout(1.0)
                first = tls.recv(1)
            except ssl.SSLError as exc:
                return Finding.CLIENT_CERT_REQUIRED if "CERTIFICATE" in str(exc).upper() else Finding.UNREACHABLE
            except OSError:  # a timeout: still a TLS server, waiting
                return Finding.TLS
            return Finding.TLS if first else Finding.CLIENT_CERT_REQUIRED
    except ssl.SSLError as exc:
        text = str(exc).upper()
        if "CERTIFICATE_REQUIRED" in text:
            return Finding.CLIENT_CERT_REQUIRED
        if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text or "PACKET_LENGTH_TOO_LONG" in text:
            return Finding.PLAINTEXT
        return Finding.UNREACHABLE
    except OSError:
        return Finding.UNREACHABLE
    finally:
        raw.close()
