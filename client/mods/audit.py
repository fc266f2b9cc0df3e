"""--audit-dir: keep exactly what leaves this machine (the encoded update, or secure aggregation's input before masking)
and what the client claimed with it, so the data owner can inspect every byte its site contributed."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedtl.client.mods.base import Blob, ClientMod, Send, Upload
from fedtl.common.cli import check_folder
from fedtl.common.sections import Section


def add_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--audit-dir", type=Path, default=None, help="keep a copy of every update this client uploads (and what it claimed)")


SECTION = Section("audit", "audit trail", add_flags)


def folder(a: argparse.Namespace) -> Path | None:
    check_folder("--audit-dir", a.audit_dir)
    return a.audit_dir


class AuditMod(ClientMod):
    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name

    def send(self, upload: Upload, call_next: Send) -> str | None:
        from fedtl.common import checkpoint

        assert upload.blob is not None, "the audit sees the encoded update: it comes after encoding"
        header = upload.header()
        stem = self.stem(upload.task.round)
        checkpoint.write_bytes_atomic(stem.with_suffix(".safetensors"), upload.blob)
        checkpoint.write_json_atomic(stem.with_suffix(".json"), {
            "round": upload.task.round, "base_digest": header.base_digest, "num_examples": header.num_examples,
            "kind": header.kind.name, "sha256": header.sha256, "metrics": header.metrics.as_dict()})
        return call_next(upload)

    def keep(self, round_number: int, suffix: str, blob: Blob) -> None:
        """Another mod's bytes for the same trail (secure aggregation's fixed-point input)."""
        from fedtl.common import checkpoint

        checkpoint.write_bytes_atomic(self.folder / f"{self.name}-round{round_number:04d}-{suffix}.safetensors", blob)

    def stem(self, round_number: int) -> Path:
        return self.folder / f"{self.name}-round{round_number:04d}"
