"""The run directory's files: an atomic checkpoint after every completed round, and reading it back.

A checkpoint is one safetensors file: the global model (`model.*`), every registered component's
tensors (`state.<component>.*`), and in its metadata the components' JSON values and the run's
fingerprint (what must match for a checkpoint to belong to this run).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fedtl.common import checkpoint, tensorcodec
from fedtl.common.config import ModelRecipe
from fedtl.common.errors import ConfigError
from fedtl.server.state import StateRegistry

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
_STATE_KEY = "fedtl_state"
_FINGERPRINT_KEY = "fedtl_fingerprint"


def snapshot(model: dict[str, torch.Tensor], state: StateRegistry, fingerprint: dict[str, object]) -> bytearray:
    """The checkpoint's bytes, copied now, so the live tensors may change while they are written."""
    extra, values = state.save()
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update({f"state.{k}": v for k, v in extra.items()})
    meta = {_STATE_KEY: json.dumps(values, sort_keys=True), _FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)}
    return tensorcodec.encode(tensors, meta)


class SettingsChanged(ConfigError):
    """The run folder's checkpoint is of a run with other settings: resuming it would mix two runs."""

    def __init__(self, message: str, diff: str) -> None:
        super().__init__(message)
        self.diff = diff


@dataclass(frozen=True)
class Loaded:
    model: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    values: dict[str, dict]


def load(run_dir: Path, fingerprint: dict[str, object]) -> Loaded | None:
    """The run directory's checkpoint, if it has one that belongs to a run with this fingerprint."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    decoded = checkpoint.load_tensors(path)
    try:
        values = json.loads(decoded.metadata[_STATE_KEY])
        saved = json.loads(decoded.metadata[_FINGERPRINT_KEY])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is not a checkpoint of this release ({exc}); use another --run-dir or --resume never") from None
    if saved != fingerprint:
        old, new = _flat(saved), _flat(fingerprint)
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise SettingsChanged(
            f"{path} belongs to a run with other settings ({diff[:600]}); use another --run-dir, or --resume never (or if-same) to "
            "start over (the earlier run's files are then kept aside in RUN_DIR/previous/)", diff[:600])
    model = {k[6:]: v for k, v in decoded.tensors.items() if k.startswith("model.")}
    state = {k[6:]: v for k, v in decoded.tensors.items() if k.startswith("state.")}
    return Loaded(model, state, values)


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def model_blob(recipe: ModelRecipe, state: dict[str, torch.Tensor], round_number: int, run_id: str) -> bytearray:
    """A plain state dict (loadable with --weights PATH) with what is needed to use it in its metadata."""
    meta = {"model": recipe.model, "num_classes": str(recipe.num_classes), "image_size": str(recipe.image_size),
            "mean": ",".join(map(str, recipe.mean)), "std": ",".join(map(str, recipe.std)), "round": str(round_number), "run_id": run_id,
            "class_names": json.dumps(list(recipe.class_names))}
    return tensorcodec.encode(state, meta)


class BackgroundWriter:
    """Writes snapshots (path, bytes) atomically on one I/O thread, in submission order."""

    def __init__(self) -> None:
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-io")
        self._pending: asyncio.Future | None = None

    def submit(self, files: list[tuple[Path, bytearray]], done: Callable[[], None] | None = None) -> None:
        """Write in the background; `done` runs on the event loop once the files are on disk."""
        self._pending = asyncio.get_running_loop().run_in_executor(self._io, write_all, files)
        if done is not None:
            self._pending.add_done_callback(lambda f: done() if not f.cancelled() and f.exception() is None else None)

    async def flush(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None

    def shutdown(self) -> None:
        self._io.shutdown(wait=True)


def write_all(files: list[tuple[Path, bytearray]]) -> None:
    for path, blob in files:
        checkpoint.write_bytes_atomic(path, blob)
