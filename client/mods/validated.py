"""Two-server validated aggregation's client side, as a mod: a round with `task.validated` never uploads its update
in the clear. The update is clipped and made fixed-point, its wires proven in range and secret-shared
(common/validated_sum): the helper gets a 32-byte seed, the coordinator the rest of the share.

The helper is the one this client's operator names (`--helper`), never the coordinator's word: a coordinator that
named itself as the helper would hold both shares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from fedtl.client.mods.base import ClientMod, Send, Upload
from fedtl.client.update import UpdateSource, flat_update, words_source
from fedtl.common import codecs
from fedtl.common.config import TrainTask, UpdateHeader
from fedtl.common.errors import PrivacyRefused, ServerUnavailable, UnknownSession, UpdateRejected
from fedtl.common.metrics import ClientMetrics
from fedtl.common.tensorcodec import sha256_hex
from fedtl.common.validated_sum import proof
from fedtl.common.validated_sum.messages import ValidatedSetup

logger = logging.getLogger("client")


def fixed_point(update: np.ndarray, clip: float, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """The update clipped to L2 norm `clip`, as b-bit integers (stochastic rounding, unbiased); whether it was clipped."""
    levels, norm = (1 << bits) - 1, float(np.linalg.norm(update))
    if not np.isfinite(norm):
        raise ValueError("the update is not finite")
    shrink = min(1.0, clip / norm) if norm > 0 else 1.0
    scaled = update * (shrink * levels / (2 * clip)) + levels / 2
    return np.clip(np.floor(scaled + rng.random(update.size)), 0, levels).astype(np.int64), norm > clip


class ValidatedMod(ClientMod):
    def __init__(self, name: str, helper: str, deposit: Callable[[int, bytes], None]) -> None:
        self.name, self.helper, self.deposit = name, helper, deposit  # deposit(round, seed): to the helper, raises on failure

    def admit(self, task: TrainTask) -> None:
        """Before anything is downloaded: such a round needs a helper this site's operator named."""
        if task.validated is not None and not self.helper:
            raise PrivacyRefused(f"this round's inputs are checked by two servers, the coordinator and a helper (it names "
                                 f"{task.validated.helper[:100]!r}); this client shares its input only with a helper its operator "
                                 "names: set --helper HOST:PORT to the helper you trust not to collude with the coordinator")

    def send(self, upload: Upload, call_next: Send) -> str | None:
        setup = upload.task.validated
        if setup is None:
            return call_next(upload)
        start = time.perf_counter()
        leader, seed = self._share(upload, setup)
        try:
            self.deposit(upload.task.round, seed)
        except (UpdateRejected, ServerUnavailable) as exc:
            logger.warning("round %d: the helper at %s did not take this client's share (%s); not taking part in this round",
                           upload.task.round, self.helper, exc)
            return None
        blob = codecs.get("raw").encode(_tensors(leader))
        header = UpdateHeader(upload.session_id, upload.task.round, upload.task.base_digest, 1, upload.task.config.update_kind, len(blob),
                              sha256_hex(blob), ClientMetrics(), "raw")
        try:
            detail = upload.io.upload(header, blob)
        except (UpdateRejected, ServerUnavailable, UnknownSession) as exc:
            logger.warning("round %d: share not taken: %s", upload.task.round, exc)
            return None
        logger.info("round %d: input shared with the helper %s and the coordinator, with its range proof (%.2f MB, %.2fs)",
                    upload.task.round, self.helper, len(blob) / 1e6, time.perf_counter() - start)
        return detail

    def _share(self, upload: Upload, setup: ValidatedSetup) -> tuple[proof.LeaderShare, bytes]:
        shape = proof.Shape(setup.coordinates, setup.bits, setup.bound)
        update = flat_update(upload.result.update)
        if update.size != shape.coordinates:
            raise UpdateRejected("wrong_shape", f"the task expects {shape.coordinates} values, this update has {update.size}")
        x, clipped = fixed_point(update, setup.clip, setup.bits, np.random.default_rng())
        if clipped:
            logger.info("round %d: update norm clipped to the round's bound %g before sharing", upload.task.round, setup.clip)
        return proof.share(proof.wires_of(x, shape, proof.norm_bits(float(np.linalg.norm(update)), setup.clip)), shape)


def _tensors(leader: proof.LeaderShare) -> UpdateSource:
    """The leader's share as two int64 tensors (field elements are below 2^61: the same bits)."""
    parts = {"wires": words_source("wires", leader.wires), "proof": words_source("proof", leader.proof)}

    def write(name: str, out: torch.Tensor) -> None:
        parts[name].write(name, out)

    return UpdateSource({name: part.specs[name] for name, part in parts.items()}, write)
