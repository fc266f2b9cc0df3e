"""Composition root of the server: data, model, coordinator, servicer, transport; signals -> graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedtl.common import checkpoint
from fedtl.common.batches import InputTransform
from fedtl.common.config import ModelRecipe
from fedtl.common.data import Source, open_split
from fedtl.common.devices import describe_device, resolve_device
from fedtl.common.errors import ConfigError, FedError
from fedtl.common.inputs import ImageInputs
from fedtl.common.models import Network, TrainPolicy, build_network, place
from fedtl.server import store, transport
from fedtl.server.auth import Authenticator
from fedtl.server.clock import Clock, SystemClock
from fedtl.server.config import ServerConfig
from fedtl.server.coordinator import Coordinator
from fedtl.server.evaluation import ServerEvaluator
from fedtl.server.events import EventBus, Sink
from fedtl.server.fd_limit import raise_fd_limit
from fedtl.server.model_state import GlobalModel
from fedtl.server.observe import Observers
from fedtl.server.root_update import RootTrainer
from fedtl.server.run_folder import RunFolder
from fedtl.server.servicer import FederationServicer
from fedtl.server.sinks.console import ConsoleLog
from fedtl.server.sinks.round_log import RoundLog
from fedtl.server.strategies import rule_entry

logger = logging.getLogger(__name__)


def build(cfg: ServerConfig, *, clock: Clock | None = None, sinks: Sequence[Sink] = ()) -> Coordinator:
    """Everything that can fail on bad flags or missing files fails here, before the port opens.

    The run's events go to the round log, the console, and any extra `sinks`; `clock` replaces the system clock."""
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():  # before any data is loaded
        raise ConfigError(f"--weights {cfg.weights}: no such file (use imagenet, none, or a local .pth/.safetensors file)")
    folder = RunFolder(cfg.run_dir)
    folder.lock()
    try:
        return _assemble(cfg, folder, clock, sinks)
    except BaseException:
        folder.release()
        raise


def _validator(source: Source, net: Network, transform: InputTransform, device: torch.device, model: GlobalModel,
               cfg: ServerConfig) -> ServerEvaluator:
    """The held-back validation images, evaluated like the test split (through the feature cache when the prefix is frozen)."""
    labels = torch.as_tensor(source.labels, dtype=torch.int64, device=device)
    return ServerEvaluator(net, lambda: ImageInputs.of(source.load(), transform, device), labels, transform,
                           source.identity or source.load().digest(), model.first_trainable, cfg.train.feature_cache, cfg.eval_batch_size,
                           cfg.cache_dir, purpose="validation")


def _assemble(cfg: ServerConfig, folder: RunFolder, clock: Clock | None, sinks: Sequence[Sink]) -> Coordinator:
    device = resolve_device(cfg.device)
    policy = TrainPolicy.parse(cfg.train_policy)
    auth = Authenticator.from_files(cfg.token, cfg.tokens_file)  # a bad tokens file fails here, before any data is loaded
    split = open_split(cfg.data, "test", cfg.data_cache, cfg.image_size or 224)
    test_source, validation_source = split.held_back(cfg.test_per_class, cfg.validation_per_class)
    if cfg.validation_per_class and validation_source is None:
        why = (f"--validation-per-class {cfg.validation_per_class} with --test-per-class {cfg.test_per_class or 'all'} needs "
               f"{(cfg.test_per_class or cfg.validation_per_class) + cfg.validation_per_class} test images of every class")
        if cfg.validation_asked:
            raise ConfigError(f"{why}; the smallest class of --data {cfg.data} has {int(min(np.bincount(split.labels, minlength=len(split.classes))))}: "
                              "lower either, or pass --validation-per-class 0 (no best model)")
        logger.info("%s: no validation slice, so no best_model.safetensors (the final model is saved as always)", why)
    classes = test_source.classes
    num_classes = cfg.num_classes or len(classes)
    if num_classes != len(classes):
        raise ConfigError(f"--num-classes {cfg.num_classes} disagrees with the {len(classes)} classes of the test split "
                          f"({', '.join(classes[:10])}); leave it at 0 to take them from the data")
    native = test_source.load(np.arange(min(1, len(test_source)))).images.shape[-1]  # one image tells the native size
    net = build_network(cfg.model, num_classes, cfg.weights, cfg.seed)
    image_size = cfg.image_size or (native if native <= 64 else net.spec.default_image_size)
    place(net, device)
    model = GlobalModel(net, policy, cfg.fedbn, cfg.chunk_bytes, cfg.download_codec)
    recipe = ModelRecipe(cfg.model, num_classes, image_size, net.spec.mean, net.spec.std, cfg.train_policy, model.client_local,
                         tuple(classes))
    transform = InputTransform(net.spec.mean, net.spec.std, image_size, augment=False)
    digest = test_source.identity or test_source.load().digest()

    def load_test() -> ImageInputs:
        start = time.perf_counter()
        inputs = ImageInputs.of(test_source.load(), transform, device)
        logger.info("test split decoded: %d images in %.1f s", len(inputs), time.perf_counter() - start)
        return inputs

    labels = torch.as_tensor(test_source.labels, dtype=torch.int64, device=device)
    evaluator = ServerEvaluator(net, load_test, labels, transform, digest, model.first_trainable, cfg.train.feature_cache,
                                cfg.eval_batch_size, cfg.cache_dir)
    validator = _validator(validation_source, net, transform, device, model, cfg) if validation_source is not None else None
    total = sum(t.numel() * t.element_size() for t in model.state.values())
    moving = sum(model.state[n].numel() * model.state[n].element_size() for n in model.trainable)
    logger.info("model %s (%s weights), %d classes, %d px, train %s: %.1f MB, %.2f MB trained and sent per round; "
                "test split %d images; evaluation on %s", cfg.model, cfg.weights, num_classes, image_size, cfg.train_policy,
                total / 1e6, moving / 1e6, len(test_source), describe_device(device))
    logger.info("server evaluation: feature cache %s (%s)", "on" if evaluator.decision.use else "off", evaluator.decision.reason)
    output = cfg.output or cfg.run_dir / "final_model.safetensors"
    clock = clock or SystemClock()
    bus = EventBus(clock)
    bus.subscribe(RoundLog(cfg.run_dir / "rounds.jsonl"))
    bus.subscribe(ConsoleLog(), critical=False)
    for sink in sinks:
        bus.subscribe(sink, critical=False)
    _check_aggregate_memory(cfg, moving)
    root = _root_trainer(cfg, model, transform, device) if cfg.strategy.rule == "fltrust" else None
    coordinator = Coordinator(cfg, model, evaluator, recipe, output, clock=clock, bus=bus, data_digest=digest, pins=auth.pins,
                              train_labels=_train_labels(cfg), root_update=root, validator=validator)
    coordinator.run_folder = folder  # held (with its lock) as long as the coordinator
    resumed = False
    if cfg.resume != "never":
        try:
            resumed = coordinator.resume()
        except store.SettingsChanged as exc:
            if cfg.resume == "auto":
                raise
            logger.warning("%s holds a run with other settings (%s): a new run starts (--resume if-same)", cfg.run_dir, exc.diff)
    if not resumed and folder.has_results(output):
        folder.set_aside(output, f"a new run starts in --run-dir {cfg.run_dir}")
    return coordinator


def _train_labels(cfg: ServerConfig) -> np.ndarray | None:
    """The shared training split's labels (no pixels): what lets the coordinator know each shard's size."""
    if cfg.strategy.weighting != "capped" or cfg.strategy.weight_cap:
        return None
    try:
        return open_split(cfg.data, "train", cfg.data_cache).first_per_class(cfg.partitions.per_class_limit).labels
    except FedError as exc:
        logger.warning("no training split at the coordinator (%s): --weighting capped caps nothing unless --weight-cap is set", exc)
        return None


def _root_trainer(cfg: ServerConfig, model: GlobalModel, transform: InputTransform, device: torch.device) -> RootTrainer:
    options = cfg.strategy.rule_options  # --root-data, --root-per-class: FLTrust's own knobs (server/strategies/fltrust.py)
    root = open_split(options["root_data"], "train", cfg.data_cache, transform.image_size).first_per_class(options["root_per_class"]).load()
    logger.info("fltrust root set: %d images from %s", len(root), options["root_data"])
    return RootTrainer(model.net, model.trainable, model.first_trainable, ImageInputs.of(root, transform, device), root.digest(), cfg.train)


def _check_aggregate_memory(cfg: ServerConfig, update_bytes: int) -> None:
    """Order-based rules keep every update of a round: refuse a configuration whose round could not fit."""
    if not rule_entry(cfg.strategy.rule).order_based:
        return
    s = cfg.schedule
    most = s.clients_per_round or cfg.limits.max_clients
    most = math.ceil(most * (1 + s.over_select)) if most else 0
    need = most * update_bytes if most else math.inf
    if need > cfg.limits.max_aggregate_bytes:
        raise ConfigError(
            f"--aggregation {cfg.strategy.rule} keeps every update of a round: up to {most or 'unbounded'} updates of "
            f"{update_bytes / 1e6:.1f} MB = {need / 1e9:.1f} GB, over --max-aggregate-memory {cfg.limits.max_aggregate_bytes >> 20} MB. "
            "Set --clients-per-round, train less of the model (--train head or blocks:K), raise --max-aggregate-memory, or use "
            "--aggregation mean with --max-update-norm (streaming, one model of memory)")


async def serve(cfg: ServerConfig, coordinator: Coordinator, observers: Observers | None = None) -> int:
    auth = Authenticator.from_files(cfg.token, cfg.tokens_file)
    credentials = transport.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert and cfg.tls_key else None
    servicer = FederationServicer(coordinator, auth)
    server, port, health = await transport.create_server(cfg.address, servicer, credentials=credentials, auth=auth,
                                                        compression=cfg.compression, on_refused=coordinator.rejected_upload)
    host = cfg.address.rpartition(":")[0]
    if credentials is None:
        logger.warning("INSECURE: listening on %s:%d without TLS%s; anyone who can reach this port can read and send "
                       "model weights. Use --tls-cert/--tls-key (python -m server.certs makes them) beyond localhost.",
                       host, port, "" if auth.enabled else " and without tokens")
    if not auth.per_client and not cfg.tls_client_ca:  # what binds a name when no credential does
        logger.warning("client names are first come, first served: without per-client tokens or client certificates, whoever "
                       "joins first under a name owns it for the run (a stranger who takes a site's name before it joins locks "
                       "that site out). Bind names to credentials: python -m server.certs --out DIR --client NAME (repeat) "
                       "writes DIR/tokens.txt for --tokens-file.")
    if credentials is not None:
        logger.info("listening on %s:%d with TLS%s%s", host, port, " and client certificates (mTLS)" if cfg.tls_client_ca else "",
                    ", tokens required" if auth.enabled else "")
    coordinator.listen_address = f"{host}:{port}"
    urls = observers.start() if observers is not None else {}
    if cfg.effective_config:  # what this run was started with, flags and --config together (secrets redacted)
        checkpoint.write_bytes_atomic(cfg.run_dir / "config.toml", cfg.effective_config.encode())
    checkpoint.write_json_atomic(cfg.run_dir / "server.json", {"port": port, "address": f"{host}:{port}", "run_id": coordinator.run_id,
                                                             "pid": os.getpid(), **urls})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.request_stop, signal.Signals(sig).name)
    try:
        code = await coordinator.run()
        if observers is not None and observers.servers and cfg.observe.linger and not coordinator.stopping.is_set():
            logger.info("the dashboard stays up %.0f s more (--dashboard-linger; Ctrl-C ends it now)", cfg.observe.linger)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(coordinator.stopping.wait(), cfg.observe.linger)
        return code
    finally:
        await transport.mark_not_serving(health)
        await server.stop(grace=2.0)
        if observers is not None:
            observers.stop()
        if coordinator.run_folder is not None:
            coordinator.run_folder.release()


def run(cfg: ServerConfig) -> int:
    if cfg.tls_cert is None and not is_loopback(cfg.address) and not cfg.allow_insecure:
        raise ConfigError(
            f"--address {cfg.address} is reachable from other machines, and without TLS anyone on the network can read "
            "and send model weights (and tokens). Add --tls-cert/--tls-key (python -m server.certs makes a development "
            "CA), listen on 127.0.0.1, or pass --allow-insecure on a trusted network."
        )
    raise_fd_limit(cfg.limits.max_clients)
    observers = Observers(cfg.observe, cfg.run_dir, cfg.output or cfg.run_dir / "final_model.safetensors", tls_cert=cfg.tls_cert,
                          tls_key=cfg.tls_key)  # its ports are bound now: a taken one fails before any data is loaded
    try:
        coordinator = build(cfg, sinks=observers.sinks)
    except BaseException:
        observers.stop()
        raise
    return asyncio.run(serve(cfg, coordinator, observers))


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")

