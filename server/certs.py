"""`python -m server.certs`: a development CA, a server certificate and client certificates, plus a token.

    python -m server.certs --out certs --server-name fed.example.org --server-name 10.0.0.5 --client hospital-a

writes into OUT (keys 0600, certificates 0644):
    ca.pem, ca.key              the CA: clients verify the server with ca.pem (--ca-cert); the server verifies
                                client certificates with it (--tls-client-ca). ca.key signs more certificates later.
    server.pem, server.key      for --tls-cert/--tls-key; valid for every --server-name (DNS names or IP
                                addresses) and for localhost/127.0.0.1 (local tests, container health checks)
    client-NAME.pem/.key        one pair per --client, for the client's --tls-cert/--tls-key (mutual TLS)
    operator-NAME.pem/.key      one pair per --operator, for `fedtl submit|ls|logs|stop --tls-cert/--tls-key` (docs/jobs.md)
    token                       a random shared token (--token / FEDTL_TOKEN); kept when it exists (--no-token: none)
    tokens.txt                  'NAME token' lines for the --client names (--tokens-file); existing lines kept

An existing CA in OUT is reused, so running it again with another --client adds that client's pair.
For development and private federations; a public deployment may use certificates from its own CA.
Uses the `cryptography` package only (no openssl command).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ALWAYS = ("localhost", "127.0.0.1")


def new_token() -> str:
    return secrets.token_hex(24)  # 48 characters (the server wants at least 16); hex never starts with '-' like a flag


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _save(out: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(out / f"{stem}.key", pem_key, 0o600)
    _write(out / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey,
           days: int, extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def load_or_create_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.is_file() and key_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_path}: not an EC key"
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key, False
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue("fedtl development CA", key, None, key, days, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), True),
    ])
    _save(out, "ca", key, cert)
    return cert, key, True


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: str, usage: x509.ObjectIdentifier,
          names: list[str], days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            sans.append(x509.DNSName(name))
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False, content_commitment=False,
                       data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]
    if sans:
        extensions.append((x509.SubjectAlternativeName(sans), False))
    return key, _issue(subject, key, ca, ca_key, days, extensions)


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 128 and name.isprintable() and not any(c.isspace() or c in "/\\" for c in name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.certs", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, required=True, help="folder for the files (created)")
    p.add_argument("--server-name", action="append", default=[], help="DNS name or IP address clients dial (repeat, or commas)")
    p.add_argument("--client", action="append", default=[], help="issue a client certificate and token for this --name (repeat)")
    p.add_argument("--operator", action="append", default=[], metavar="NAME", help="issue a client certificate for a standing "
                   "coordinator's operators, with no site token (its --operator-cert-name NAME; repeat)")
    p.add_argument("--days", type=int, default=365, help="validity of new certificates")
    p.add_argument("--no-token", action="store_true", help="write no shared token (when FEDTL_TOKEN is managed elsewhere)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    a.server_name = [n.strip() for names in a.server_name for n in names.split(",") if n.strip()]
    bad = [n for n in [*a.server_name, *a.client, *a.operator] if not _valid_name(n)]
    if bad or a.days < 1:
        print(f"error: {'invalid names ' + repr(bad) if bad else '--days must be >= 1'}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    ca, ca_key, created = load_or_create_ca(a.out, max(a.days, 3650))
    print(f"{'created' if created else 'reusing'} CA {a.out / 'ca.pem'}")
    if a.server_name or not (a.out / "server.pem").exists():
        names = list(dict.fromkeys([*a.server_name, *ALWAYS]))
        key, cert = _leaf(ca, ca_key, (a.server_name or ["localhost"])[0], ExtendedKeyUsageOID.SERVER_AUTH, names, a.days)
        _save(a.out, "server", key, cert)
        print(f"server certificate {a.out / 'server.pem'} for {', '.join(names)}")
    token_path = a.out / "token"
    if not token_path.is_file() and not a.no_token:
        _write(token_path, (new_token() + "\n").encode(), 0o600)
    tokens = {}
    tokens_path = a.out / "tokens.txt"
    if tokens_path.is_file():
        tokens = dict(line.split(None, 1) for line in tokens_path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    for client in a.client:
        key, cert = _leaf(ca, ca_key, client, ExtendedKeyUsageOID.CLIENT_AUTH, [client], a.days)
        _save(a.out, f"client-{client}", key, cert)
        tokens.setdefault(client, new_token())
        print(f"client certificate {a.out / f'client-{client}.pem'} and token for {client}")
    for operator in a.operator:  # a certificate only: no line in tokens.txt, so the name never joins as a site
        key, cert = _leaf(ca, ca_key, operator, ExtendedKeyUsageOID.CLIENT_AUTH, [operator], a.days)
        _save(a.out, f"operator-{operator}", key, cert)
        print(f"operator certificate {a.out / f'operator-{operator}.pem'} (server: --operator-cert-name {operator})")
    if tokens:
        _write(tokens_path, "".join(f"{name} {token.strip()}\n" for name, token in tokens.items()).encode(), 0o600)
        print(f"per-client tokens: {tokens_path} (server: --tokens-file)")
    if token_path.is_file() and not a.no_token:
        print(f"shared token (server and clients: --token or FEDTL_TOKEN): {token_path.read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
