"""Composition root of a simulation: the real coordinator (server/app.py's `build`), the virtual clients' data and
backend, and the run. No port opens; the run folder, round log, checkpoints and final model are a real run's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from fedtl.common import checkpoint
from fedtl.common.config import DataAssignment
from fedtl.common.devices import resolve_device
from fedtl.common.shards import ShardTable
from fedtl.server.app import build
from fedtl.server.coordinator import Coordinator
from fedtl.server.events import Sink
from fedtl.simulation.backends import WorkerContext, open_backend
from fedtl.simulation.config import SimulationConfig, with_effective
from fedtl.simulation.driver import VirtualClients
from fedtl.simulation.population import load_population, training_source

logger = logging.getLogger(__name__)


def prepare(cfg: SimulationConfig, sinks: tuple[Sink, ...] = ()) -> tuple[Coordinator, VirtualClients]:
    """The coordinator and its virtual clients, joined and ready; everything that can fail on flags or files fails here."""
    start = time.perf_counter()
    server_cfg = with_effective(cfg)
    coordinator = build(server_cfg, sinks=sinks)
    try:
        model, recipe = coordinator.model, coordinator.recipe
        source = training_source(server_cfg.data, server_cfg.data_cache, recipe, server_cfg.partitions)
        device = resolve_device(server_cfg.device)
        population, how = load_population(source, model.net, model.first_trainable, recipe, server_cfg.train, device, server_cfg.cache_dir)
        logger.info("simulation: %d virtual clients over %d training examples; %s", cfg.virtual_clients, len(source), how)
        context = WorkerContext(server_cfg.model, recipe.num_classes, server_cfg.train_policy,
                                {n: model.state[n].detach().cpu().clone() for n in model.static}, population, cfg.vectorise,
                                server_cfg.run_dir / "virtual-clients")
        backend = open_backend(cfg.backend, context, model.net, cfg.workers, cfg.batch, cfg.ray_address)
        shards = ShardTable(source.labels)
        plan = server_cfg.partitions
        shards.of(DataAssignment(0, plan.num_partitions or cfg.virtual_clients, plan.scheme, plan.alpha, plan.classes_per_client, plan.seed,
                                 plan.holdout_fraction, plan.per_class_limit))  # a partition that cannot be cut fails now, not in round 1
        clients = VirtualClients(coordinator, backend, shards, cfg.virtual_clients)
    except BaseException:
        if coordinator.run_folder is not None:
            coordinator.run_folder.release()
        raise
    logger.info("simulation ready in %.2f s", time.perf_counter() - start)
    return coordinator, clients


async def simulate(cfg: SimulationConfig, coordinator: Coordinator, clients: VirtualClients) -> int:
    if cfg.effective_config:
        checkpoint.write_bytes_atomic(cfg.server.run_dir / "config.toml", cfg.effective_config.encode())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread (a library call): no handlers
            loop.add_signal_handler(sig, coordinator.request_stop, signal.Signals(sig).name)
    clients.join()
    try:
        return await coordinator.run()
    finally:
        clients.close()
        if coordinator.run_folder is not None:
            coordinator.run_folder.release()


def run(cfg: SimulationConfig) -> int:
    coordinator, clients = prepare(cfg)
    return asyncio.run(simulate(cfg, coordinator, clients))
