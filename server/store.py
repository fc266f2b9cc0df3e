"""The run directory: an atomic checkpoint after every completed round, and what resuming needs from it."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import checkpoint, tensorcodec
from common.config import ModelRecipe
from common.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class RunState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    run_id: str
    round: int  # last completed round (0: none yet)
    rng_state: list  # random.Random.getstate(), JSON-friendly
    partitions: dict[str, int] = field(default_factory=dict)
    partition_count: int | None = None
    fingerprint: dict[str, object] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds of rounds completed (time-to-accuracy clock)


def snapshot(state: RunState, model: dict[str, torch.Tensor], optimizer: dict[str, torch.Tensor]) -> bytearray:
    """The checkpoint's bytes, copied now, so the live tensors may change while they are written."""
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update({f"opt.{k}": v for k, v in optimizer.items()})
    return tensorcodec.encode(tensors, {"fedtl_run_state": json.dumps(state.__dict__, sort_keys=True)})


def model_blob(recipe: ModelRecipe, state: dict[str, torch.Tensor], round_number: int, run_id: str) -> bytearray:
    """A plain state dict (loadable with --weights PATH) with what is needed to use it in its metadata."""
    meta = {"model": recipe.model, "num_classes": str(recipe.num_classes), "image_size": str(recipe.image_size),
            "mean": ",".join(map(str, recipe.mean)), "std": ",".join(map(str, recipe.std)), "round": str(round_number), "run_id": run_id}
    return tensorcodec.encode(state, meta)


class BackgroundWriter:
    """Writes snapshots (path, bytes) atomically on one I/O thread, in submission order."""

    def __init__(self) -> None:
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-io")
        self._pending: asyncio.Future | None = None

    def submit(self, files: list[tuple[Path, bytearray]]) -> None:
        self._pending = asyncio.get_running_loop().run_in_executor(self._io, write_all, files)

    async def flush(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None

    def shutdown(self) -> None:
        self._io.shutdown(wait=True)


def write_all(files: list[tuple[Path, bytearray]]) -> None:
    for path, blob in files:
        checkpoint.write_bytes_atomic(path, blob)


def load(run_dir: Path, fingerprint: dict[str, object]) -> tuple[RunState, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    decoded = checkpoint.load_tensors(path)
    try:
        raw = json.loads(decoded.metadata["fedtl_run_state"])
        state = RunState(**raw)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a checkpoint of this tool ({exc}); use another --run-dir or --resume never") from None
    if state.fingerprint != fingerprint:
        diff = {k: (state.fingerprint.get(k), v) for k, v in fingerprint.items() if state.fingerprint.get(k) != v}
        raise ConfigError(
            f"{path} belongs to a different run (checkpoint vs flags: {diff}); use another --run-dir, or --resume never to start over"
        )
    state.rng_state = _tuples(state.rng_state)
    model = {k[6:]: v for k, v in decoded.tensors.items() if k.startswith("model.")}
    optimizer = {k[4:]: v for k, v in decoded.tensors.items() if k.startswith("opt.")}
    return state, model, optimizer


def _tuples(value: object) -> object:
    """JSON turned random.getstate()'s tuples into lists; setstate needs them back."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
