"""Durable progress: a checkpoint after every completed round (written while the next round runs), resume
from it, and the final model. What a checkpoint holds beyond the model comes from the state registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict
from pathlib import Path

from fedtl.common import checkpoint
from fedtl.common.config import ModelRecipe
from fedtl.server import store
from fedtl.server.clock import Clock
from fedtl.server.config import ServerConfig
from fedtl.server.events import CheckpointWritten, EventBus
from fedtl.server.model_state import GlobalModel
from fedtl.server.state import StateRegistry

logger = logging.getLogger(__name__)


def fingerprint(cfg: ServerConfig, recipe: ModelRecipe, data_digest: str) -> dict[str, object]:
    """Every setting that changes the result: a checkpoint made with other values belongs to another run.
    (Not the number of rounds, deadlines or evaluation cadence: a run may be extended or re-timed.)"""
    s = cfg.schedule
    return json.loads(json.dumps({
        "model": cfg.model, "weights": cfg.weights, "classes": list(recipe.class_names), "image_size": recipe.image_size,
        "train_policy": cfg.train_policy, "fedbn": cfg.fedbn, "test_data": data_digest, "seed": cfg.seed,
        "train": asdict(cfg.train), "partitions": asdict(cfg.partitions), "strategy": asdict(cfg.strategy),
        "selection": {"clients_per_round": s.clients_per_round, "fraction": s.fraction, "over_select": s.over_select,
                      "min_fit_clients": s.min_fit_clients},
    }))


class Checkpointer:
    """Owns the run's identity and progress (run id, rounds completed, the selection RNG as of the last completed round,
    elapsed time) and writes them with the model and every registered component's state."""

    def __init__(self, cfg: ServerConfig, recipe: ModelRecipe, model: GlobalModel, state: StateRegistry, rng: random.Random,
                 clock: Clock, pool: Executor, bus: EventBus, output: Path, fingerprint: dict[str, object]) -> None:
        self.cfg, self.recipe, self.model, self.state = cfg, recipe, model, state
        self.rng, self.clock, self.pool, self.bus, self.output = rng, clock, pool, bus, output
        self.fingerprint = fingerprint
        self.run_id = uuid.uuid4().hex[:12]  # a resumed run keeps its own (loaded with the run's state)
        self.completed = 0  # rounds completed (and checkpointed once the writer flushes)
        self.resumed = False  # a checkpoint was loaded (possibly round 0's: killed before round 1 closed durably)
        self.elapsed_before = 0.0  # time-to-accuracy clock carried over a resume
        self.clock_start: float | None = None  # when round 1 (or the first round after a resume) started
        self.saved_rng = rng.getstate()  # selection RNG as of the last completed round
        self.writer = store.BackgroundWriter()
        self.landed: list[Callable[[int], None]] = []  # told each round whose checkpoint is on disk (the best model's promotion)
        state.register("run", self._save_run, self._load_run)

    def resume(self) -> bool:
        """Continue an interrupted run; False when there is none, or the one there already completed its rounds."""
        loaded = store.load(self.cfg.run_dir, self.fingerprint)
        if loaded is None:
            return False
        done, wanted = int(loaded.values.get("run", {}).get("round", 0)), self.cfg.schedule.rounds
        if done >= wanted:
            logger.info("the run in %s already completed %d of --rounds %d (raise --rounds to continue it)", self.cfg.run_dir, done, wanted)
            return False
        self.model.load(loaded.model)
        self.state.restore(loaded.state, loaded.values, str(self.cfg.run_dir / store.CHECKPOINT))
        self.resumed = True
        return True

    def elapsed(self) -> float:
        return self.elapsed_before + (self.clock.monotonic() - self.clock_start if self.clock_start is not None else 0.0)

    def _save_run(self) -> tuple[dict, dict]:
        return {}, {"run_id": self.run_id, "round": self.completed, "rng_state": list(self.saved_rng), "elapsed": self.elapsed()}

    def _load_run(self, _: dict, values: dict) -> None:
        self.run_id = str(values["run_id"])
        self.completed = int(values["round"])
        self.elapsed_before = float(values["elapsed"])
        self.rng.setstate(_tuples(values["rng_state"]))  # type: ignore[arg-type]
        self.saved_rng = self.rng.getstate()

    def round_done(self, number: int) -> None:
        self.completed = number
        self.saved_rng = self.rng.getstate()

    def snapshot(self) -> list[tuple[Path, bytearray]]:
        """Copy what the checkpoint (and the round's model, if kept) must hold: one memcpy, no disk yet."""
        cfg = self.cfg
        files = [(cfg.run_dir / store.CHECKPOINT, store.snapshot(self.model.full_state(), self.state, self.fingerprint))]
        if cfg.keep_round_models:
            files.append((cfg.run_dir / "models" / f"round-{self.completed:04d}.safetensors", self.model_blob()))
        return files

    async def write_now(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, lambda: store.write_all(self.snapshot()))

    async def write_in_background(self) -> None:
        """Snapshot now; write and fsync on the I/O thread while the next round runs.

        The round record is already in rounds.jsonl; if the process dies before the write lands,
        the previous checkpoint stays and resuming drops the record past it, so both agree."""
        files = await asyncio.get_running_loop().run_in_executor(self.pool, self.snapshot)
        number, path, size = self.completed, files[0][0], len(files[0][1])
        def done() -> None:
            for hook in self.landed:
                hook(number)
            self.bus.publish(CheckpointWritten(number, str(path), size))

        self.writer.submit(files, done)

    def model_blob(self) -> bytearray:
        return store.model_blob(self.recipe, self.model.full_state(), self.completed, self.run_id)

    def save_final(self) -> None:
        blob = self.model_blob()
        checkpoint.write_bytes_atomic(self.output, blob)
        logger.info("final model saved: %s (%.1f MB)", self.output, len(blob) / 1e6)


def _tuples(value: object) -> object:
    """JSON turned random.getstate()'s tuples into lists; setstate needs them back."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
