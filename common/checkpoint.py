"""Crash-safe files: write to a temp file, fsync, rename over the target, fsync the folder.

Checkpoints and final models are safetensors files (common/tensorcodec.py): any safetensors
reader opens them, and loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from fedtl.common import tensorcodec


def write_bytes_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a write on an open file names no path: name the one the user must free or fix
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> int:
    """Atomically write tensors (and string metadata) as safetensors; return the file size."""
    blob = tensorcodec.encode(tensors, metadata)
    write_bytes_atomic(path, blob)
    return len(blob)


def load_tensors(path: Path) -> tensorcodec.Decoded:
    return tensorcodec.decode(bytearray(path.read_bytes()))


def write_json_atomic(path: Path, obj: object) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse to open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
