"""Where virtual clients train: in this process, on a pool of local processes, or on Ray workers (one machine or a
cluster). Every backend runs the same `Trainer` (simulation/work.py) on batches of clients and yields each
batch's results as it finishes, so the coordinator folds updates while other batches still train.

Ray is used as it is (tasks and its object store); nothing here schedules. Pickle travels between this process and
its own workers only (the pool's pipes, Ray's object store): a Ray cluster is one trust domain (docs/simulation.md).
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fedtl.common.config import TrainConfig
from fedtl.common.errors import ConfigError, DependencyMissing
from fedtl.common.models import Network, TrainPolicy, build_network
from fedtl.simulation.config import BACKENDS
from fedtl.simulation.work import ClientJob, ClientResult, Population, Trainer

RAY_EXTRA = "pip install 'ray>=2.9' (or: pip install -e '.[ray]')"


@dataclass(frozen=True)
class WorkerContext:
    """What a worker needs to train any client: the network (rebuilt, then the coordinator's frozen weights) and the
    population's inputs. Sent once per worker, never per round."""

    model: str
    num_classes: int
    train_policy: str
    static: dict[str, torch.Tensor]  # the frozen part of the coordinator's model (the trained part comes each round)
    population: Population
    vectorise: bool = True
    ledgers: Path | None = None  # record-level DP-SGD: the virtual clients' privacy ledgers (RUN_DIR/virtual-clients)


def make_trainer(context: WorkerContext, net: Network | None = None) -> Trainer:
    if net is None:
        net = build_network(context.model, context.num_classes, "none", seed=0)
        state = net.module.state_dict()
        with torch.no_grad():
            for name, tensor in context.static.items():
                state[name].copy_(tensor)
    net.module.eval()
    return Trainer(net, TrainPolicy.parse(context.train_policy).first_trainable(net), context.population, context.vectorise,
                   context.ledgers)


class LocalBackend:
    """In this process: linear heads on cached features train together (vectorised); anything else one by one."""

    name = "local"

    def __init__(self, context: WorkerContext, net: Network, batch: int = 256) -> None:
        self.trainer = make_trainer(context, copy.deepcopy(net))
        self.batch = batch

    def train(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
              personal: dict[str, torch.nn.Module]) -> Iterator[list[ClientResult]]:
        for start in range(0, len(jobs), self.batch):
            yield self.trainer.train(state, jobs[start : start + self.batch], cfg, personal)

    def close(self) -> None:
        pass


_WORKER: Trainer | None = None  # one per pool process, built by its initializer


def _init_worker(context: WorkerContext, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = make_trainer(context)


def _train_in_worker(state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
                     personal: dict[str, torch.nn.Module]) -> list[ClientResult]:
    assert _WORKER is not None
    return _WORKER.train(state, jobs, cfg, personal)


class ProcessBackend:
    """A pool of local processes (spawned: no forked torch state), sized to the cores: for full fine-tuning, where
    each client trains a whole network and clients are independent."""

    name = "process"

    def __init__(self, context: WorkerContext, workers: int, batch: int) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.batch = batch
        self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                           initializer=_init_worker, initargs=(context, 1))

    def train(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
              personal: dict[str, torch.nn.Module]) -> Iterator[list[ClientResult]]:
        size = self.batch or max(1, -(-len(jobs) // self.workers))
        futures = [self.pool.submit(_train_in_worker, state, part, cfg, {j.name: personal[j.name] for j in part if j.name in personal})
                   for part in _batches(jobs, size)]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Batches of virtual clients as Ray tasks. The worker context goes into Ray's object store once; each worker
    process builds its Trainer from it the first time and keeps it (keyed by the context's object id)."""

    name = "ray"

    def __init__(self, context: WorkerContext, workers: int, batch: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise DependencyMissing(f"--backend ray needs Ray: {RAY_EXTRA}") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count() or 1}
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, **kwargs)
            self._owns = True
        else:
            self._owns = False
        self.workers = int(ray.available_resources().get("CPU", workers or 1))
        self.batch = batch
        self.context = ray.put(context)
        self.task = ray.remote(num_cpus=1)(_train_on_ray)

    def train(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
              personal: dict[str, torch.nn.Module]) -> Iterator[list[ClientResult]]:
        ray = self.ray
        shared = ray.put(state)
        size = self.batch or max(1, -(-len(jobs) // max(self.workers, 1)))
        pending = [self.task.remote([self.context], shared, part, cfg, {j.name: personal[j.name] for j in part if j.name in personal})
                   for part in _batches(jobs, size)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()


_RAY_TRAINERS: dict[str, Trainer] = {}


def _train_on_ray(context: list, state: dict[str, torch.Tensor], jobs: list[ClientJob], cfg: TrainConfig,
                  personal: dict[str, torch.nn.Module]) -> list[ClientResult]:
    """`context` is [ObjectRef] (in a list, so Ray does not fetch it for every task): fetched once per worker."""
    import ray

    key = context[0].hex()
    trainer = _RAY_TRAINERS.get(key)
    if trainer is None:
        torch.set_num_threads(1)
        _RAY_TRAINERS.clear()
        trainer = _RAY_TRAINERS[key] = make_trainer(ray.get(context[0]))
    return trainer.train(state, jobs, cfg, personal)


def _batches(jobs: list[ClientJob], size: int) -> Iterator[list[ClientJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def open_backend(name: str, context: WorkerContext, net: Network, workers: int, batch: int, address: str | None):  # type: ignore[no-untyped-def]
    if name == "local":
        return LocalBackend(context, net, batch or 256)
    if name == "process":
        return ProcessBackend(context, workers, batch)
    if name == "ray":
        return RayBackend(context, workers, batch, address)
    raise ConfigError(f"--backend {name!r}: use one of {', '.join(BACKENDS)}")
