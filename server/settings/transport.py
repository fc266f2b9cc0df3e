"""How weights move and what any one peer may hold: the listening address, the codecs, chunking, and the limits that
bound a client's share of the coordinator (sessions, joins, transfer slots, how slowly a transfer may move)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fedtl.common import codec_names
from fedtl.common.chunks import DEFAULT_CHUNK_BYTES
from fedtl.common.codec_names import CHOICES, DOWNLOAD
from fedtl.common.errors import ConfigError
from fedtl.common.sections import Section


@dataclass(frozen=True)
class Limits:
    """What any one peer, or all of them, may hold: sessions, joins, transfer slots, and how slowly a transfer may move."""

    max_clients: int  # 0: no limit
    max_clients_per_address: int  # sessions from one network address, loopback exempt (0: no limit)
    join_rate: float  # joins a second from one address (0: no limit)
    join_rate_total: float  # joins a second in all (0: no limit)
    max_concurrent_uploads: int
    max_concurrent_downloads: int
    stall_timeout: float  # a transfer must show progress within this many seconds
    min_transfer_rate: float  # bytes a second a transfer must average once stall_timeout has passed (0: no rate)
    max_aggregate_bytes: int  # what order-based rules may keep for one round's updates (RAM, then a file in the run dir)


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--address", default="127.0.0.1:50051",
                   help="host:port to listen on (port 0: any free port); beyond loopback it needs TLS or --allow-insecure")
    g.add_argument("--compression", default="none", help="none or gzip (for slow links)")
    g.add_argument("--upload-codec", default="raw", type=_codec, metavar="|".join(CHOICES),
                   help="how clients encode updates: raw (exact), fp16/bf16 (2 bytes a value), int8 (1 byte a value, per-channel "
                   "scales, unbiased stochastic rounding), topk:F (the fraction F largest entries, with client-side error "
                   "feedback), topk+int8:F (those entries in 8 bits)")
    g.add_argument("--download-codec", default="raw", choices=DOWNLOAD,
                   help="how the global model goes to clients: raw (exact), fp16/bf16/int8 (the coordinator then evaluates and "
                   "checkpoints that decoded model), delta (int8 steps from the version a client holds, checked by digest)")
    g.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help=f"bytes per streamed chunk (<= {DEFAULT_CHUNK_BYTES})")
    g.add_argument("--max-concurrent-uploads", type=int, default=4, help="updates decoded at once; bounds server memory")
    g.add_argument("--max-concurrent-downloads", type=int, default=8, help="model streams sent at once (others queue); bounds server memory")
    g.add_argument("--max-clients", type=int, default=1000, help="connected clients at most (0: no limit); more wait and retry")
    g.add_argument("--max-clients-per-address", type=int, default=8,
                   help="connected clients one network address may hold (loopback exempt; 0: no limit): a swarm of sessions from one "
                        "machine cannot take every data shard or crowd out the sites; raise it for many clients behind one NAT")
    g.add_argument("--join-rate", type=float, default=20.0, help="joins a second from one address (bursts of 5 s worth; 0: no limit)")
    g.add_argument("--join-rate-total", type=float, default=200.0, help="joins a second in all (0: no limit)")
    g.add_argument("--stall-timeout", type=float, default=30.0, help="a transfer that shows no progress for this many seconds is cut off")
    g.add_argument("--min-transfer-rate", type=float, default=32768.0,
                   help="bytes a second a transfer must average once --stall-timeout has passed (0: any rate)")


SECTION = Section("transport", "transport and limits", add_flags)


def limits(a: argparse.Namespace) -> Limits:
    if a.compression not in ("none", "gzip"):
        raise ConfigError(f"--compression {a.compression!r}: use none or gzip")
    if not 0 < a.chunk_bytes <= DEFAULT_CHUNK_BYTES:
        raise ConfigError(f"--chunk-bytes must be in 1..{DEFAULT_CHUNK_BYTES}")
    host, sep, port = a.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--address {a.address!r}: use HOST:PORT, e.g. 0.0.0.0:50051 or [::]:50051")
    if a.max_concurrent_uploads < 1 or a.max_concurrent_downloads < 1:
        raise ConfigError("--max-concurrent-uploads and --max-concurrent-downloads must be >= 1")
    for flag, value in (("--max-clients", a.max_clients), ("--max-clients-per-address", a.max_clients_per_address), ("--join-rate", a.join_rate), ("--join-rate-total", a.join_rate_total),
                        ("--min-transfer-rate", a.min_transfer_rate)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 (0: no limit), got {value}")
    if not a.stall_timeout > 0:
        raise ConfigError(f"--stall-timeout must be > 0 seconds, got {a.stall_timeout}")
    return Limits(a.max_clients, a.max_clients_per_address, a.join_rate, a.join_rate_total, a.max_concurrent_uploads, a.max_concurrent_downloads,
                  a.stall_timeout, a.min_transfer_rate, int(a.max_aggregate_memory * (1 << 20)))


def _codec(name: str) -> str:
    """The codec's canonical name (topk:0.010 -> topk:0.01: what clients are told and records say)."""
    try:
        return codec_names.canonical(name)
    except Exception as exc:  # ConfigError: argparse prints it as the flag's error
        raise argparse.ArgumentTypeError(str(exc)) from None
