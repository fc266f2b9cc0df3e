"""What never leaves the client, kept in its work directory across restarts: FedBN's BatchNorm layers and a
personal head. A file that does not fit (another model, damaged) is ignored with a warning, never trusted."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from fedtl.common import checkpoint
from fedtl.common.network import Network

logger = logging.getLogger(__name__)


class LocalState:
    def __init__(self, workdir: Path) -> None:
        self.tensors_path = workdir / "local_state.safetensors"
        self.head_path = workdir / "personal_head.safetensors"

    def save_tensors(self, net: Network, names: set[str], model: str) -> None:
        state = net.module.state_dict()
        checkpoint.save_tensors(self.tensors_path, {n: state[n].detach().cpu() for n in sorted(names)}, {"model": model})

    def load_tensors(self, net: Network, names: set[str]) -> bool:
        """Put the saved client-local tensors into `net`; True when they were there and fit."""
        if not names or not self.tensors_path.is_file():
            return False
        try:
            decoded = checkpoint.load_tensors(self.tensors_path)
            state = net.module.state_dict()
            if set(decoded.tensors) != names:
                raise ValueError("names differ")
            with torch.no_grad():
                for name, tensor in decoded.tensors.items():
                    state[name].copy_(tensor)
            logger.info("restored %d client-local tensors from %s", len(decoded.tensors), self.tensors_path)
            return True
        except Exception as exc:
            logger.warning("ignoring local state %s (%s)", self.tensors_path, exc)
            return False

    def save_head(self, head: torch.nn.Module, model: str, run_id: str = "") -> None:
        """The head, with the model and the run whose backbone it was trained on (a cross-site evaluation pairs them)."""
        checkpoint.save_tensors(self.head_path, {k: v.detach().cpu() for k, v in head.state_dict().items()},
                                {"model": model, "run_id": run_id})

    def head_for(self, model: str, run_id: str) -> bytes | None:
        """The saved head's file if it was trained on run `run_id`'s `model` (what a site may share), else None."""
        if not run_id or not self.head_path.is_file():
            return None
        try:
            meta = checkpoint.load_tensors(self.head_path).metadata
        except Exception as exc:  # damaged: nothing to share
            logger.warning("ignoring personal head %s (%s)", self.head_path, exc)
            return None
        return self.head_path.read_bytes() if (meta.get("model"), meta.get("run_id")) == (model, run_id) else None

    def load_head(self, net: Network) -> torch.nn.Module | None:
        """The personal head saved by an earlier run of this client, shaped like `net`'s head; None if absent or unfit."""
        if not self.head_path.is_file():
            return None
        head = copy.deepcopy(net.stages[-1][1])
        try:
            head.load_state_dict(checkpoint.load_tensors(self.head_path).tensors)
        except Exception as exc:  # a head of another model or size: start again from the global one
            logger.warning("ignoring personal head %s (%s)", self.head_path, exc)
            return None
        logger.info("restored this client's personal head from %s", self.head_path)
        return head
