"""Secure aggregation's client side, as a mod: a round with `task.secagg` never uploads its update in the clear. The update
becomes a fixed-point vector (clipped, weighted, with this client's share of any distributed noise), the round's keys
are advertised, and each later phase (shares, masked input, consistency check, unmasking) answers the coordinator's
SecAggStep. The protocol itself is client/secagg.py, with no I/O; this module is its I/O.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from fedtl.client.mods.audit import AuditMod
from fedtl.client.mods.base import ClientMod, Io, Send, Upload
from fedtl.client.secagg import Abort, SecureRound
from fedtl.client.update import flat_update, words_source
from fedtl.common import codecs, faults
from fedtl.common.config import TrainTask, UpdateHeader
from fedtl.common.errors import ServerUnavailable, UnknownSession, UpdateRejected
from fedtl.common.metrics import ClientMetrics
from fedtl.common.secagg import fixedpoint, noise
from fedtl.common.secagg.messages import ADVERTISE, UNMASK, SecAggMessage, SecAggStep
from fedtl.common.tensorcodec import sha256_hex

logger = logging.getLogger("client")


class SecureAggregationMod(ClientMod):
    def __init__(self, name: str, audit: AuditMod | None = None) -> None:
        self.name, self.audit = name, audit
        self.secure: SecureRound | None = None  # the secure round under way, with its keys (memory only)
        self.task: TrainTask | None = None
        self.seconds = 0.0  # this client's own secure-aggregation work this round, network excluded
        self.rounds_done = 0
        self._buffer: np.ndarray | None = None  # the fixed-point vector: masked in place and uploaded; reused next round

    def send(self, upload: Upload, call_next: Send) -> str | None:
        if upload.task.secagg is None:
            return call_next(upload)
        self._start(upload)
        return None  # nothing goes up in the clear: the masked input follows in its own phase

    def _start(self, upload: Upload) -> None:
        """Encode the update as a fixed-point vector (clipped, weighted), then advertise this round's keys."""
        task, result = upload.task, upload.result
        setup, start = task.secagg, time.perf_counter()
        assert setup is not None
        weight = 1 if setup.max_weight == 1 else max(1, min(result.num_examples, setup.max_weight))
        flat = flat_update(result.update)
        variance = noise.client_variance(setup.noise, flat.size, setup.bits, len(setup.participants))
        encoded, clipped = fixedpoint.encode(flat, weight, setup.clip, setup.bits, np.random.default_rng(), result.metrics.as_dict(),
                                             setup.modulus_bits, self._buffer, variance)
        self._buffer = encoded
        if clipped:
            logger.info("round %d: update norm %.4g clipped to the round's bound %g before masking", task.round,
                        float(np.linalg.norm(flat)), setup.clip)
        if variance:
            logger.info("round %d: added this client's share of the distributed noise (Skellam, std %.4g of the clip; the sum of "
                        "all %d: noise multiplier %.4g)", task.round, variance**0.5 / noise.levels(setup.bits) * 2,
                        len(setup.participants), setup.noise)
        if self.audit is not None:  # what this client contributes to the sum, before masking (stays here)
            self.audit.keep(task.round, "secagg-input", codecs.get("raw").encode(words_source("encoded", encoded)))
        try:
            self.secure = SecureRound(setup, task.round, task.base_digest, self.name, upload.session_id, encoded)
        except Abort as exc:
            logger.warning("round %d: not taking part in secure aggregation: %s", task.round, exc)
            _send(upload.io, SecAggMessage(upload.session_id, task.round, ADVERTISE, withdraw=str(exc)))
            return
        self.task = task
        faults.hit("secagg_advertise")
        advertise = self.secure.start()
        self.seconds = time.perf_counter() - start
        _send(upload.io, advertise)
        logger.info("round %d: secure aggregation: trained on %d examples, keys advertised (%d participants, %d neighbours, "
                    "threshold %d)", task.round, result.num_examples, len(setup.participants), setup.degree, setup.threshold)

    def step(self, step: SecAggStep, session_id: str, io: Io) -> bool:
        faults.hit(f"secagg_{step.phase}")
        secure, task = self.secure, self.task
        if secure is None or task is None or secure.round != step.round:
            logger.warning("round %d: asked for secure aggregation's %s phase, but this client has no keys for it (restarted?); "
                           "leaving the round", step.round, step.phase)
            _send(io, SecAggMessage(session_id, step.round, step.phase, withdraw="this client has no keys for the round (it restarted)"))
            return True
        secure.session_id = session_id  # a reconnect gives a new session; the round's keys stay
        start = time.perf_counter()
        try:
            answer = secure.handle(step)
            self.seconds += time.perf_counter() - start
        except Abort as exc:
            logger.warning("round %d: leaving secure aggregation in its %s phase: %s", step.round, step.phase, exc)
            _send(io, secure.withdraw(step.phase, str(exc)))
            self.secure = None
            return True
        if isinstance(answer, np.ndarray):
            self._upload_masked(io, session_id, task, answer)
            return True
        _send(io, answer)
        if step.phase == UNMASK:
            self.rounds_done += 1
            self.secure = None
            logger.info("round %d: secure aggregation done: revealed %d seed and %d key shares; this client's share of the work "
                        "took %.3fs", step.round, len(answer.seed_shares), len(answer.key_shares), self.seconds)
        return True

    def _upload_masked(self, io: Io, session_id: str, task: TrainTask, masked: np.ndarray) -> None:
        blob = codecs.get("raw").encode(words_source("masked", masked))
        header = UpdateHeader(session_id, task.round, task.base_digest, 1, task.config.update_kind, len(blob), sha256_hex(blob),
                              ClientMetrics(), "raw")
        try:
            io.upload(header, blob)
        except (UpdateRejected, ServerUnavailable, UnknownSession) as exc:
            logger.warning("round %d: masked update not taken: %s", task.round, exc)
            return
        logger.info("round %d: masked update sent (%.2f MB in %d-bit words)", task.round, len(blob) / 1e6,
                    task.secagg.modulus_bits if task.secagg else 64)


def _send(io: Io, message: SecAggMessage) -> None:
    try:
        io.secagg(message)
    except (UpdateRejected, ServerUnavailable, UnknownSession) as exc:
        logger.warning("round %d: secure aggregation %s answer not taken: %s", message.round, message.phase, exc)
