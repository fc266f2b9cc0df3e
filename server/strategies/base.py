"""The strategy seam: every aggregation rule and server optimizer runs through these interfaces.

A round asks its strategy three things, each replaceable on its own (as in Flower's Strategy,
but streaming: nothing here needs every client's update in memory unless the rule does):
- `expectation(base)`: what an update must look like (names, dtypes, encodings, size bounds);
- `open(template, context) -> Aggregator`: `add(client, update, weight)` as updates arrive, then
  `result()` once the round closes;
- `apply(weights, aggregate, context)`: move the global model (the server optimizer).
Wrappers (norm clipping, weight caps, later privacy) wrap any strategy. State that must survive a
restart (optimizer moments) comes out of `state_dict()` and goes back through `load_state_dict()`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedtl.common.config import Instruction, UpdateKind
from fedtl.server.strategies import StrategySettings
from fedtl.server.validation import Expectation, Update


@dataclass(frozen=True)
class RoundContext:
    """What a strategy may know about the round it aggregates."""

    round: int
    kind: UpdateKind  # weight deltas (FedAvg) or gradients (FedSGD)
    parameters: frozenset[str]  # trainable parameters; every other tensor is a buffer (BatchNorm statistics, counters)
    participants: tuple[str, ...] = ()  # the clients selected for the round
    attempt: int = 1
    base_digest: str = ""  # the global model the round's updates answer
    population: int = 0  # the connected clients the participants were sampled from (privacy accounting)


class BudgetSpent(Exception):
    """A strategy's budget (differential privacy's ε) does not allow another round: the run ends cleanly before it."""


@dataclass
class Aggregate:
    """A round's combined update: per-tensor float64 values in the clients' units (a delta or a gradient)."""

    tensors: dict[str, torch.Tensor]
    total_weight: float
    count: int
    stats: dict[str, int] = field(default_factory=dict)  # counted by wrappers: clipped, capped, ...
    metrics: dict[str, float] = field(default_factory=dict)  # round metrics only the rule knows (secure aggregation's sums)
    left_out: dict[str, str] = field(default_factory=dict)  # clients whose update the rule refused, and why (validated inputs)


class RoundProtocol(abc.ABC):
    """Exchanges a rule needs around the updates (secure aggregation's keys, shares, tags, reveals).

    A round runs `phases` in order, one of them "train" (the updates, by UploadUpdate); each phase expects the
    clients that answered the previous one. The run loop sends what `instruction` says when a phase opens, tells
    `opened` who is in it, and routes each client message to `receive` (which raises UpdateRejected to refuse it).
    """

    phases: tuple[str, ...] = ("train",)
    needed: int = 1  # answers every phase needs

    @abc.abstractmethod
    def task(self, task: Instruction) -> Instruction:
        """The first phase's instruction (the training task, completed with what the protocol needs)."""

    @abc.abstractmethod
    def instruction(self, phase: str, client: str) -> Instruction: ...

    @abc.abstractmethod
    def phase_of(self, message: object) -> str:
        """Which phase a client message answers."""

    @abc.abstractmethod
    def receive(self, phase: str, client: str, message: object) -> None: ...

    def opened(self, phase: str, clients: list[str]) -> None:  # noqa: B027 (optional hook: most protocols need no notice)
        """A phase opened for these clients."""


class Aggregator(abc.ABC):
    """Folds one round's updates; `add` runs on a single worker thread, in arrival order."""

    protocol: RoundProtocol | None = None  # exchanges the round needs besides the updates

    def expectation(self, base: Expectation) -> Expectation:
        """What this round's updates must look like, when the round itself decides (secure aggregation's word size)."""
        return base

    @abc.abstractmethod
    def add(self, client: str, update: Update, weight: float) -> None: ...

    @abc.abstractmethod
    def result(self) -> Aggregate: ...

    @property
    def count(self) -> int:
        """Updates folded so far."""
        return 0

    def stats(self) -> dict[str, int]:
        """What wrappers counted so far (clipped, capped, ...); read once the folds have landed."""
        return {}


class Rule(abc.ABC):
    """How updates combine: the weighted mean, or an order-based robust rule (server/strategies/stacked.py).

    A built-in rule's knobs are declared and checked in server/strategies/knobs.py (read without loading any rule), and
    `from_settings` gets them back as `s.rule_options`. A rule also names what it needs from the coordinator
    (`resources`: "spill_dir" for order-based rules, "root_update" for FLTrust); build_strategy passes exactly those."""

    name: str = ""
    resources: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: StrategySettings, **kw: Any) -> Rule:
        return cls(**s.rule_options, **kw)

    def needed(self) -> int:
        """Updates a round must bring for this rule to work."""
        return 1

    @abc.abstractmethod
    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator: ...

    def describe(self) -> str:
        return self.name


class ServerOptimizer(abc.ABC):
    """How the aggregate moves the global weights.

    The pseudo-gradient of a parameter is the aggregate delta (FedAvg) or minus the aggregate
    gradient (FedSGD); `step` turns it into the change applied with the server learning rate.
    Buffers are never stepped: momentum or adaptivity means nothing for running statistics, so
    every optimizer gives each buffer the example-weighted mean of the clients' values (integer
    buffers, such as BatchNorm's num_batches_tracked, take the rounded mean).
    """

    name: str = ""
    default_lr: float = 1.0  # what --server-lr 0 means for this optimizer with FedAvg

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.steps = 0  # server steps taken, persisted (bias correction and schedules count them)

    @classmethod
    def from_settings(cls, s: StrategySettings) -> ServerOptimizer:
        return cls(s.lr)

    @abc.abstractmethod
    def direction(self, name: str, pseudo_gradient: torch.Tensor) -> torch.Tensor:
        """The change for one parameter before the learning rate, given its pseudo-gradient (float64)."""

    def step_size(self) -> float:
        return self.lr

    def apply(self, weights: Mapping[str, torch.Tensor], aggregate: Aggregate, context: RoundContext) -> None:
        self.steps += 1
        lr = self.step_size()
        for name, value in aggregate.tensors.items():
            target = weights[name]
            if name in context.parameters:
                pseudo = -value if context.kind == UpdateKind.GRADIENT else value
                change = self.direction(name, pseudo) * lr
            else:
                change = value  # buffers: the clients' mean value (deltas from the same base)
            if target.is_floating_point():
                target.add_(change.to(target.dtype))
            else:
                target.add_(torch.round(change).to(target.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Moments and counters; tensors only, so the checkpoint stays in the safetensors format."""
        return {"steps": torch.tensor(self.steps, dtype=torch.int64), **self.buffers()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.steps = int(state.get("steps", torch.tensor(0)))
        self.load_buffers({k: v for k, v in state.items() if k != "steps"})

    def buffers(self) -> dict[str, torch.Tensor]:
        return {}

    def load_buffers(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)[:3]}")

    def describe(self) -> str:
        return f"{self.name} (lr {self.lr:g})"


class Strategy(abc.ABC):
    """One replaceable object per decision of a round; see the module docstring."""

    @abc.abstractmethod
    def expectation(self, base: Expectation) -> Expectation: ...

    @abc.abstractmethod
    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator: ...

    @abc.abstractmethod
    def apply(self, weights: Mapping[str, torch.Tensor], aggregate: Aggregate, context: RoundContext) -> None: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str: ...


class Combined(Strategy):
    """The usual strategy: a rule to combine updates and an optimizer to apply the result."""

    def __init__(self, rule: Rule, optimizer: ServerOptimizer) -> None:
        self.rule, self.optimizer = rule, optimizer

    def expectation(self, base: Expectation) -> Expectation:
        return base

    def open(self, template: Mapping[str, torch.Tensor], context: RoundContext) -> Aggregator:
        return self.rule.open(template, context)

    def apply(self, weights: Mapping[str, torch.Tensor], aggregate: Aggregate, context: RoundContext) -> None:
        self.optimizer.apply(weights, aggregate, context)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.optimizer.load_state_dict(state)

    def describe(self) -> str:
        return f"{self.rule.describe()} + {self.optimizer.describe()}"
