"""The client's session loop: connect (with backoff) -> Welcome -> per task: download, train, upload -> Finished."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import torch

from fedtl.client import identity
from fedtl.client.config import ClientConfig
from fedtl.client.connection import Connection, TlsError, Unresolvable
from fedtl.client.error_feedback import ErrorFeedback
from fedtl.client.privacy import PrivacyBudget
from fedtl.client.runtime import ClientRuntime, RoundOutcome
from fedtl.client.secagg import Abort, SecureRound
from fedtl.client.update import flat_update, words_source
from fedtl.common import checkpoint, codecs, faults
from fedtl.common.config import Finished, Hello, TrainTask, UpdateHeader, Welcome
from fedtl.common.secagg import fixedpoint, noise
from fedtl.common.secagg.messages import ADVERTISE, UNMASK, SecAggMessage, SecAggStep
from fedtl.common.devices import describe_device, resolve_device
from fedtl.common.errors import (
    BudgetReached,
    DataUnavailable,
    FederationRefused,
    FedError,
    PrivacyRefused,
    ServerUnavailable,
    SessionSuperseded,
    Unauthenticated,
    UnknownSession,
    UpdateRejected,
)
from fedtl.common.retry import backoff
from fedtl.common.progress import Progress
from fedtl.common.tensorcodec import sha256_hex

logger = logging.getLogger("client")

EXIT_OK, EXIT_FAILED_RUN, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3, 4
UNRESOLVED_TRIES = 3  # a host name that never resolved, this many times in a row, is a typo, not a hiccup
DOUBTFUL_TLS_TRIES = 3  # a server that hangs up after the handshake this often in a row wants a (different) client certificate


class ProgressLog:
    """Local training's progress (common/progress.py: a bar on a terminal, a line at most every 10 s elsewhere)."""

    def __init__(self, round_number: int, epochs: int) -> None:
        self.round, self.epochs = round_number, epochs
        self.progress: Progress | None = None

    def __call__(self, epoch: int, batch: int, per_epoch: int, loss: float) -> None:
        faults.hit("train")
        if self.progress is None:
            self.progress = Progress(f"round {self.round}: training", self.epochs * per_epoch, " batches")
        self.progress.update(epoch * per_epoch + batch, f"epoch {epoch + 1}/{self.epochs}, loss {loss:.4f}")
        if batch == per_epoch and epoch + 1 == self.epochs:
            self.progress.close(f"loss {loss:.4f}")


class ClientApp:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        amp = cfg.amp == "on" or (cfg.amp == "auto" and self.device.type == "cuda")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.runtime = ClientRuntime(cfg.data, cfg.data_cache, cfg.workdir, self.device, amp, cfg.name,
                                     PrivacyBudget(cfg.workdir, cfg.max_epsilon, cfg.min_client_dp_noise))
        self.hello = Hello(cfg.name, cfg.partition_index, cfg.partition_count, socket.gethostname()[:255],
                           describe_device(self.device)[:255], torch.__version__[:64], identity=identity.load_or_create(cfg.workdir))
        self.rounds_done = 0
        self._upload_buffer = bytearray()
        self.error_feedback = ErrorFeedback(cfg.workdir)  # for biased codecs (top-k)
        self.runtime.allowed_plugins = cfg.allow_plugins
        self._connected_once = False  # a session got as far as Welcome since the last failure
        self._joined_ever = False  # a session got as far as Welcome at all
        self.secure: SecureRound | None = None  # the secure round under way, with its keys (memory only)
        self.secure_task: TrainTask | None = None
        self.secure_seconds = 0.0
        self._secure_buffer: np.ndarray | None = None

    def run(self) -> int:
        source = self.runtime.open_data()  # fail now, not in round 1, when the data is missing
        logger.info("client %s: %d local training images in %d classes; server %s%s", self.cfg.name, len(source), len(source.classes),
                    self.cfg.server, " (TLS)" if self.cfg.ca_cert else " (insecure)")
        waits = backoff(initial=0.5, maximum=15.0)
        first_failure: float | None = None
        unresolved = doubtful_tls = 0
        while True:
            connection = Connection(self.cfg)
            try:
                return self._session(connection)
            except TlsError as exc:
                doubtful_tls += 1
                if exc.certain or doubtful_tls >= DOUBTFUL_TLS_TRIES:
                    logger.error("%s", exc)
                    return EXIT_REFUSED
                error: FedError = exc
            except BudgetReached as exc:
                logger.warning("%s", exc)  # the owner's limit, reached as planned: done, not failed
                return EXIT_OK
            except (Unauthenticated, FederationRefused, SessionSuperseded, DataUnavailable, PrivacyRefused) as exc:
                logger.error("%s", exc)  # retrying cannot cure any of these
                return EXIT_REFUSED
            except Unresolvable as exc:
                unresolved += 1
                # A name that resolved before is only missing for a while (a restarting container leaves the network's DNS).
                if not self._joined_ever and unresolved >= UNRESOLVED_TRIES:
                    logger.error("giving up: %s (%d tries)", exc, unresolved)
                    return EXIT_UNREACHABLE
                error = exc
            except UnknownSession as exc:
                logger.warning("%s", exc)
                error = exc
            except ServerUnavailable as exc:
                unresolved = doubtful_tls = 0
                error = exc
            finally:
                connection.close()
            now = time.monotonic()
            if self._connected_once:
                first_failure, self._connected_once = now, False
                waits = backoff(initial=0.5, maximum=15.0)
            first_failure = first_failure or now
            if self.cfg.max_wait and now - first_failure > self.cfg.max_wait:
                logger.error("giving up: %s for more than %gs (--max-wait)", error, self.cfg.max_wait)
                return EXIT_UNREACHABLE
            delay = next(waits)
            logger.info("waiting for server at %s: %s; retrying in %.1fs", self.cfg.server, error, delay)
            time.sleep(delay)

    def _session(self, connection: Connection) -> int:
        connection.wait_ready()
        session_id = ""
        for instruction in connection.connect(self.hello):
            if isinstance(instruction, Welcome):
                self._connected_once = self._joined_ever = True
                session_id = instruction.session_id
                logger.info("joined run %s as %s", instruction.run_id, self.cfg.name)
                self.runtime.run_id = instruction.run_id
                self.runtime.set_recipe(instruction.recipe)
            elif isinstance(instruction, TrainTask):
                self._train(connection, session_id, instruction)
            elif isinstance(instruction, SecAggStep):
                self._secure_step(connection, session_id, instruction)
            elif isinstance(instruction, Finished):
                if instruction.resume:
                    limit = f"for up to {self.cfg.max_wait:g}s (--max-wait)" if self.cfg.max_wait else "with no time limit (--max-wait 0)"
                    logger.warning("the server paused the run (%s); waiting for it to come back %s", instruction.reason, limit)
                    raise ServerUnavailable("the server paused the run")
                if instruction.failed:
                    logger.error("server ended the run: %s", instruction.reason)
                    return EXIT_FAILED_RUN
                logger.info("server says the run is over (%s); %d rounds trained here", instruction.reason, self.rounds_done)
                return EXIT_OK
        raise ServerUnavailable("server closed the session")

    def _train(self, connection: Connection, session_id: str, task: TrainTask) -> None:
        start = time.monotonic()
        logger.info("round %d: training (%s, %d local epoch(s), batch %d, lr %g)", task.round, task.config.algorithm,
                    task.config.local_epochs, task.config.batch_size, task.config.lr)
        try:
            outcome = self.runtime.run_round(task, lambda ref, buffer=None: connection.download(session_id, ref, buffer),
                                             ProgressLog(task.round, task.config.local_epochs))
        except UpdateRejected as exc:  # the model version is gone: the round moved on without us
            logger.warning("round %d: %s", task.round, exc)
            return
        except (ServerUnavailable, UnknownSession) as exc:
            # Keep reading the session: the server may have said Finished before it went away;
            # if it crashed, the session stream fails next and we reconnect.
            logger.warning("round %d: download failed (%s)", task.round, exc)
            return
        if task.secagg is not None:
            self._secure_start(connection, session_id, task, outcome)
            return
        # One upload buffer, reused round after round: the previous update was sent (or given up) before this round began.
        blob = self.error_feedback.encode(codecs.get(task.update_encoding), outcome.update, self.runtime.run_id, self._upload_buffer)
        if isinstance(blob, bytearray):
            self._upload_buffer = blob
        header = UpdateHeader(session_id, task.round, task.base_digest, outcome.num_examples, outcome.kind, len(blob),
                              sha256_hex(blob), outcome.metrics, task.update_encoding)
        if self.cfg.audit_dir is not None:
            self._audit(task, header, blob)
        try:
            detail = connection.upload(header, blob)
        except UpdateRejected as exc:
            logger.warning("round %d: server refused the update: %s", task.round, exc)
            return
        except (ServerUnavailable, UnknownSession) as exc:
            logger.warning("round %d: upload failed (%s)", task.round, exc)
            return
        self.error_feedback.accepted()
        self.rounds_done += 1
        m = outcome.metrics
        evaluated = f", held-out acc {100 * m['eval_accuracy']:.2f}%" if "eval_accuracy" in m else ""
        trained = f", train loss {m['train_loss']:.4f}" if "train_loss" in m else ""  # an operator's --train-fn may report neither
        trained += f" acc {100 * m['train_accuracy']:.2f}%" if "train_accuracy" in m else ""
        logger.info("round %d: sent %.2f MB update, %d examples%s%s, %.1fs (%s)", task.round, len(blob) / 1e6, outcome.num_examples,
                    trained, evaluated, time.monotonic() - start, detail)

    # ---------------------------------------------------------------- secure aggregation (client/secagg.py)

    def _secure_start(self, connection: Connection, session_id: str, task: TrainTask, outcome: RoundOutcome) -> None:
        """Encode the update as a fixed-point vector (clipped, weighted), then advertise this round's keys."""
        setup, start = task.secagg, time.perf_counter()
        assert setup is not None
        weight = 1 if setup.max_weight == 1 else max(1, min(outcome.num_examples, setup.max_weight))
        flat = flat_update(outcome.update)
        variance = noise.client_variance(setup.noise, flat.size, setup.bits, len(setup.participants))
        encoded, clipped = fixedpoint.encode(flat, weight, setup.clip, setup.bits, np.random.default_rng(), outcome.metrics,
                                             setup.modulus_bits, self._secure_buffer, variance)
        self._secure_buffer = encoded  # masked in place and uploaded; reused next round
        if clipped:
            logger.info("round %d: update norm %.4g clipped to the round's bound %g before masking", task.round,
                        float(np.linalg.norm(flat)), setup.clip)
        if variance:
            logger.info("round %d: added this client's share of the distributed noise (Skellam, std %.4g of the clip; the sum of "
                        "all %d: noise multiplier %.4g)", task.round, variance**0.5 / noise.levels(setup.bits) * 2,
                        len(setup.participants), setup.noise)
        if self.cfg.audit_dir is not None:  # what this client contributes to the sum, before masking (stays here)
            blob = codecs.get("raw").encode(words_source("encoded", encoded))
            checkpoint.write_bytes_atomic(self.cfg.audit_dir / f"{self.cfg.name}-round{task.round:04d}-secagg-input.safetensors", blob)
        try:
            self.secure = SecureRound(setup, task.round, task.base_digest, self.cfg.name, session_id, encoded)
        except Abort as exc:
            logger.warning("round %d: not taking part in secure aggregation: %s", task.round, exc)
            self._secure_send(connection, SecAggMessage(session_id, task.round, ADVERTISE, withdraw=str(exc)))
            return
        self.secure_task = task
        faults.hit("secagg_advertise")
        advertise = self.secure.start()
        self.secure_seconds = time.perf_counter() - start  # this client's own secure-aggregation work, network excluded
        self._secure_send(connection, advertise)
        logger.info("round %d: secure aggregation: trained on %d examples, keys advertised (%d participants, %d neighbours, "
                    "threshold %d)", task.round, outcome.num_examples, len(setup.participants), setup.degree, setup.threshold)

    def _secure_step(self, connection: Connection, session_id: str, step: SecAggStep) -> None:
        faults.hit(f"secagg_{step.phase}")
        secure, task = self.secure, self.secure_task
        if secure is None or task is None or secure.round != step.round:
            logger.warning("round %d: asked for secure aggregation's %s phase, but this client has no keys for it (restarted?); "
                           "leaving the round", step.round, step.phase)
            self._secure_send(connection, SecAggMessage(session_id, step.round, step.phase, withdraw="this client has no keys for "
                                                        "the round (it restarted)"))
            return
        secure.session_id = session_id  # a reconnect gives a new session; the round's keys stay
        start = time.perf_counter()
        try:
            answer = secure.handle(step)
            self.secure_seconds += time.perf_counter() - start
        except Abort as exc:
            logger.warning("round %d: leaving secure aggregation in its %s phase: %s", step.round, step.phase, exc)
            self._secure_send(connection, secure.withdraw(step.phase, str(exc)))
            self.secure = None
            return
        if isinstance(answer, np.ndarray):
            blob = codecs.get("raw").encode(words_source("masked", answer))
            header = UpdateHeader(session_id, task.round, task.base_digest, 1, task.config.update_kind, len(blob), sha256_hex(blob), {}, "raw")
            try:
                connection.upload(header, blob)
            except (UpdateRejected, ServerUnavailable, UnknownSession) as exc:
                logger.warning("round %d: masked update not taken: %s", step.round, exc)
                return
            logger.info("round %d: masked update sent (%.2f MB in %d-bit words)", step.round, len(blob) / 1e6, task.secagg.modulus_bits
                        if task.secagg else 64)
            return
        self._secure_send(connection, answer)
        if step.phase == UNMASK:
            self.rounds_done += 1
            self.secure = None
            logger.info("round %d: secure aggregation done: revealed %d seed and %d key shares; this client's share of the work "
                        "took %.3fs", step.round, len(answer.seed_shares), len(answer.key_shares), self.secure_seconds)

    def _secure_send(self, connection: Connection, message: SecAggMessage) -> None:
        try:
            connection.secagg(message)
        except (UpdateRejected, ServerUnavailable, UnknownSession) as exc:
            logger.warning("round %d: secure aggregation %s answer not taken: %s", message.round, message.phase, exc)

    def _audit(self, task: TrainTask, header: UpdateHeader, blob: bytearray | memoryview) -> None:
        """Keep exactly what leaves this machine (the update) and what it claimed, for the data owner to inspect."""
        assert self.cfg.audit_dir is not None
        stem = self.cfg.audit_dir / f"{self.cfg.name}-round{task.round:04d}"
        checkpoint.write_bytes_atomic(stem.with_suffix(".safetensors"), blob)
        info = {"round": task.round, "base_digest": task.base_digest, "num_examples": header.num_examples,
                "kind": header.kind.name, "sha256": header.sha256, "metrics": header.metrics}
        checkpoint.write_json_atomic(stem.with_suffix(".json"), info)
