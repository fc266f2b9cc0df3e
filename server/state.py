"""Checkpointable state: each component that must survive a restart registers how to save and restore it.

The run's own counters, the client registry's partitions and the strategy's optimizer moments
register today; a privacy accountant or clients' error-feedback bookkeeping register the same way,
and resuming restores every one of them from the checkpoint, or refuses a checkpoint that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedtl.common.errors import ConfigError

Tensors = dict[str, torch.Tensor]
Saver = Callable[[], tuple[Tensors, dict]]  # -> (tensors, JSON-ready values)
Loader = Callable[[Tensors, dict], None]


@dataclass(frozen=True)
class _Component:
    save: Saver
    load: Loader


class StateRegistry:
    def __init__(self) -> None:
        self._components: dict[str, _Component] = {}

    def register(self, name: str, save: Saver, load: Loader) -> None:
        if not name or "." in name or name in self._components:
            raise ValueError(f"state component name {name!r} must be unique and contain no dot")
        self._components[name] = _Component(save, load)

    def save(self) -> tuple[Tensors, dict]:
        """Every component's state: tensors named `component.name`, and JSON values by component."""
        tensors: Tensors = {}
        values: dict = {}
        for name, component in self._components.items():
            own, meta = component.save()
            tensors.update({f"{name}.{key}": value for key, value in own.items()})
            values[name] = meta
        return tensors, values

    def restore(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, dict], where: str) -> None:
        unknown = sorted(set(values) - set(self._components))
        if unknown:
            raise ConfigError(f"{where} holds state of {unknown} that this configuration does not use; "
                              "use another --run-dir, or --resume never to start over")
        for name, component in self._components.items():
            prefix = f"{name}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            component.load(own, dict(values.get(name, {})))
