"""The client's session loop: connect (with backoff) -> Welcome -> per task: the mods admit it, the local round runs,
the update goes out through the mods (client/mods/) -> Finished. The loop knows no mod by name."""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Iterator

import torch

from fedtl.client import identity
from fedtl.client.config import ClientConfig
from fedtl.client.connection import Connection, TlsError, Unresolvable, deposit_to_helper
from fedtl.client.cross_evaluation import evaluate_models
from fedtl.client.error_feedback import ErrorFeedbackMod
from fedtl.client.mods import ClientMod, Upload, send_through
from fedtl.client.mods.audit import AuditMod
from fedtl.client.mods.encode import EncodeMod
from fedtl.client.mods.pacing import LinkPacingMod
from fedtl.client.mods.policy import SitePolicyMod
from fedtl.client.mods.privacy import PrivacyBudgetMod
from fedtl.client.mods.secure import SecureAggregationMod
from fedtl.client.mods.validated import ValidatedMod
from fedtl.client.privacy import PrivacyBudget
from fedtl.client.progress_log import ProgressLog
from fedtl.client.runtime import ClientRuntime
from fedtl.client.site_statistics import site_statistics
from fedtl.common.config import Finished, Hello, SegmentRef, TrainTask, Welcome
from fedtl.common.devices import describe_device, resolve_device
from fedtl.common.errors import (
    BudgetReached,
    ConfigError,
    CorruptError,
    DataUnavailable,
    FederationRefused,
    FedError,
    NothingListening,
    PrivacyRefused,
    ServerUnavailable,
    SessionSuperseded,
    Unauthenticated,
    UnknownSession,
    UpdateRejected,
)
from fedtl.common.jobs import JobAnswer, JobOffer, PersonalHead, SiteEvaluation, SiteInstruction
from fedtl.common.retry import backoff
from fedtl.common.secagg.messages import SecAggStep

logger = logging.getLogger("client")

EXIT_OK, EXIT_FAILED_RUN, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3, 4
UNRESOLVED_TRIES = 3  # a host name that never resolved, this many times in a row, is a typo, not a hiccup
HINT_AFTER = 3  # failed connects before a client that never joined says what to check
DOUBTFUL_TLS_TRIES = 3  # a server that hangs up after the handshake this often in a row wants a (different) client certificate


class ClientApp:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        amp = cfg.amp == "on" or (cfg.amp == "auto" and self.device.type == "cuda")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        privacy = PrivacyBudget(cfg.workdir, cfg.max_epsilon, cfg.min_client_dp_noise, cfg.dp_delta)
        self.runtime = ClientRuntime(cfg.data, cfg.data_cache, cfg.workdir, self.device, amp, cfg.name, privacy)
        self.privacy = privacy
        self.mods = build_mods(cfg, privacy)
        self.standing = False  # a standing coordinator offered a job: a task this site refuses leaves that job, not the federation
        self.hello = Hello(cfg.name, cfg.partition_index, cfg.partition_count, socket.gethostname()[:255],
                           describe_device(self.device)[:255], torch.__version__[:64], identity=identity.load_or_create(cfg.workdir))
        self.rounds_done = 0
        self.runtime.allowed_plugins = cfg.allow_plugins
        self._connected_once = False  # a session got as far as Welcome since the last failure
        self._joined_ever = False  # a session got as far as Welcome at all
        self.session_id = ""  # the open session's, once welcomed

    def run(self) -> int:
        source = self.runtime.open_data()  # fail now, not in round 1, when the data is missing
        logger.info("client %s: %d local training images in %d classes; server %s%s", self.cfg.name, len(source), len(source.classes),
                    self.cfg.server, " (TLS)" if self.cfg.ca_cert else " (insecure)")
        waits = backoff(initial=0.5, maximum=15.0)
        first_failure: float | None = None
        unresolved = doubtful_tls = failures = 0
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
                first_failure, self._connected_once, failures = now, False, 0
                waits = backoff(initial=0.5, maximum=15.0)
            first_failure = first_failure or now
            failures += 1
            limit = self.cfg.max_wait if self._joined_ever else self.cfg.first_wait
            if limit and now - first_failure > limit:
                hint = "" if self._joined_ever else "; it never answered: is the server started, and are --server's host and port right?"
                logger.error("giving up: %s for more than %gs (--max-wait)%s", error, limit, hint)
                return EXIT_UNREACHABLE
            if failures == HINT_AFTER and not self._joined_ever and isinstance(error, NothingListening):
                logger.warning("nothing answers at %s: is the server started, and is the port right? (retrying for %gs: --max-wait)",
                               self.cfg.server, limit)
            delay = next(waits)
            logger.info("waiting for the server: %s; retrying in %.1fs", error, delay)
            time.sleep(delay)

    def _session(self, connection: Connection) -> int:
        for mod in self.mods:
            mod.connected(connection)
        connection.wait_ready()
        self.session_id = ""
        instructions = connection.connect(self.hello)  # held here: the session stays open until the server is told why
        try:
            return self._follow(connection, instructions)
        except BaseException as exc:  # the server hears why this client goes, where there is something to say
            if self.session_id and (reason := leaving_reason(exc)):
                connection.leave(self.session_id, reason)
            raise
        finally:
            instructions.close()  # the session ends here (a generator: its stream is cancelled), before the channel closes

    def _follow(self, connection: Connection, instructions: Iterator[SiteInstruction]) -> int:
        session_id = ""
        for instruction in instructions:
            try:
                if isinstance(instruction, Welcome):
                    self._connected_once = self._joined_ever = True
                    session_id = self.session_id = instruction.session_id
                    logger.info("joined run %s as %s", instruction.run_id, self.cfg.name)
                    self.runtime.run_id = instruction.run_id
                    if rule := self.cfg.policy.refuses_model(instruction.recipe.model):  # whatever an offer said
                        raise PrivacyRefused(f"this site's policy refuses run {instruction.run_id}: {rule}")
                    self.runtime.set_recipe(instruction.recipe)
                elif isinstance(instruction, JobOffer):
                    self._answer(connection, instruction)
                elif isinstance(instruction, TrainTask):
                    self._train(connection, session_id, instruction)
                elif isinstance(instruction, SecAggStep):
                    self._step(connection, session_id, instruction)
                elif isinstance(instruction, Finished):
                    if instruction.standing:
                        (logger.error if instruction.failed else logger.info)("job over (%s); %d rounds trained here; staying for "
                                                                              "the next job", instruction.reason, self.rounds_done)
                        self.rounds_done, session_id = 0, ""
                        continue
                    return self._finished(instruction)
            except PrivacyRefused as exc:
                if not self.standing or isinstance(exc, BudgetReached):
                    raise
                logger.error("%s: this site leaves the job and stays for the next one", exc)  # its policy binds every task
                connection.leave(session_id, f"it refuses the task: {exc}")
        raise ServerUnavailable("server closed the session")

    def _finished(self, finished: Finished) -> int:
        if finished.resume:
            limit = f"for up to {self.cfg.max_wait:g}s (--max-wait)" if self.cfg.max_wait else "with no time limit (--max-wait 0)"
            logger.warning("the server paused the run (%s); waiting for it to come back %s", finished.reason, limit)
            raise ServerUnavailable("the server paused the run")
        if finished.failed:
            logger.error("server ended the run: %s", finished.reason)
            return EXIT_FAILED_RUN
        logger.info("server says the run is over (%s); %d rounds trained here", finished.reason, self.rounds_done)
        return EXIT_OK

    def _train(self, connection: Connection, session_id: str, task: TrainTask) -> None:
        for mod in self.mods:
            mod.admit(task)  # before anything is downloaded: a refused task costs nothing
        start = time.monotonic()
        logger.info("round %d: training (%s, %d local epoch(s), batch %d, lr %g)", task.round, task.config.algorithm,
                    task.config.local_epochs, task.config.batch_size, task.config.lr)
        try:
            def download(ref: SegmentRef, buffer: bytearray | None = None) -> memoryview:
                return connection.download(session_id, ref, buffer)

            result = self.runtime.run_round(task, download, ProgressLog(task.round, task.config.local_epochs))
        except UpdateRejected as exc:  # the model version is gone: the round moved on without us
            logger.warning("round %d: %s", task.round, exc)
            return
        except (ServerUnavailable, UnknownSession) as exc:
            # Keep reading the session: the server may have said Finished before it went away;
            # if it crashed, the session stream fails next and we reconnect.
            logger.warning("round %d: download failed (%s)", task.round, exc)
            return
        upload = Upload(task, session_id, self.runtime.run_id, result, connection)
        try:
            detail = send_through(self.mods, upload, _upload)
        except UpdateRejected as exc:
            logger.warning("round %d: server refused the update: %s", task.round, exc)
            return
        except (ServerUnavailable, UnknownSession) as exc:
            logger.warning("round %d: upload failed (%s)", task.round, exc)
            return
        if detail is None:
            return  # a mod holds the update back for a protocol of its own (secure aggregation)
        self.rounds_done += 1
        m, size = result.metrics, len(upload.blob) if upload.blob is not None else 0
        evaluated = f", held-out acc {100 * m.eval_accuracy:.2f}%" if m.eval_accuracy is not None else ""
        trained = f", train loss {m.train_loss:.4f}" if m.train_loss is not None else ""  # an operator's --train-fn may report neither
        trained += f" acc {100 * m.train_accuracy:.2f}%" if m.train_accuracy is not None else ""
        logger.info("round %d: sent %.2f MB update, %d examples%s%s, %.1fs (%s)", task.round, size / 1e6, result.num_examples,
                    trained, evaluated, time.monotonic() - start, detail)

    def _answer(self, connection: Connection, offer: JobOffer) -> None:
        """A standing coordinator's job: the site's policy decides; a statistics job's counts ride in the answer."""
        self.standing = True
        rule, statistics = self.cfg.policy.refuses(offer), None
        evaluations: tuple[SiteEvaluation, ...] = ()
        heads: tuple[PersonalHead, ...] = ()
        try:
            if not rule and offer.kind == "statistics":
                statistics = site_statistics(self.runtime.open_data(), offer.data, offer.statistics_epsilon, self.privacy)
            elif not rule and offer.kind == "evaluate":
                evaluations, heads = evaluate_models(offer, self.runtime.open_data(), functools.partial(connection.download, offer.offer_id),
                                                     self.device, self.cfg.allow_plugins, f"--data {self.cfg.data}",
                                                     self.runtime.local if self.cfg.policy.share_personal else None)
        except (PrivacyRefused, ConfigError, DataUnavailable, CorruptError) as exc:  # the owner's budget, a plugin it does not
            rule = str(exc)  # allow, classes it cannot map, a model file that is not one: the job is refused, the site stays
        if rule:
            logger.warning("job %s refused: %s", offer.job_id, rule)
        else:
            logger.info("job %s accepted (%s%s)", offer.job_id, offer.kind, f", {offer.rounds} rounds of {offer.model}" if offer.rounds else "")
        try:
            connection.answer(JobAnswer(offer.offer_id, not rule, rule, statistics, evaluations, heads))
        except UpdateRejected as exc:
            logger.warning("job %s: the coordinator did not take the answer: %s", offer.job_id, exc)

    def _step(self, connection: Connection, session_id: str, step: SecAggStep) -> None:
        if not any(mod.step(step, session_id, connection) for mod in self.mods):
            logger.warning("round %d: the server asked for a %s phase this client does not run; ignored", step.round, step.phase)


def _upload(upload: Upload) -> str:
    """The innermost step of the mods' chain: send what they made."""
    assert upload.blob is not None, "no mod encoded the update (EncodeMod belongs in every chain)"
    return upload.io.upload(upload.header(), upload.blob)


def build_mods(cfg: ClientConfig, privacy: PrivacyBudget) -> list[ClientMod]:
    """The site's mods in their one order, outermost first: the owner's privacy limits refuse a task before anything
    else happens; link pacing shapes every transfer; validated and secure aggregation take their rounds away from the plain upload;
    error feedback encodes biased codecs with its residual (else the plain encoding does); the audit keeps the very
    bytes that then leave."""
    audit = AuditMod(cfg.audit_dir, cfg.name) if cfg.audit_dir is not None else None
    mods: list[ClientMod] = [SitePolicyMod(cfg.policy), PrivacyBudgetMod(privacy)]
    if cfg.simulate_link:
        mods.append(LinkPacingMod(*cfg.simulate_link))
    mods += [ValidatedMod(cfg.name, cfg.helper, functools.partial(deposit_to_helper, cfg)), SecureAggregationMod(cfg.name, audit),
             ErrorFeedbackMod(cfg.workdir), EncodeMod()]
    if audit is not None:
        mods.append(audit)
    return mods


def leaving_reason(exc: BaseException) -> str:
    """What the server may hear about why this client leaves ("": nothing to say, the server already knows or is gone).
    Nothing of the site's data or paths: those stay in its own log."""
    if not isinstance(exc, Exception):
        # SIGTERM or Ctrl-C (Terminated, KeyboardInterrupt) unwinds from wherever the signal landed, possibly inside a
        # gRPC call on this channel: another call there could hang the exit (CI saw one). The server sees the session
        # close at once and logs the client as disconnected.
        return ""
    if isinstance(exc, BudgetReached):
        return f"its data owner's privacy limit is reached: {exc}"
    if isinstance(exc, PrivacyRefused):
        return f"it refuses the task: {exc}"
    if isinstance(exc, DataUnavailable):
        return "its data became unavailable (the site's log says why)"
    if isinstance(exc, FedError):
        return ""  # the connection failed, the server refused it or ended the session: nobody to tell, or it knows
    return f"an internal error ({type(exc).__name__}; the site's log has the details)"
