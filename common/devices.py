"""Choose the compute device from --device auto|cpu|cuda[:N], with errors that say what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtl.common.errors import ConfigError

if TYPE_CHECKING:
    import torch


def check_device_text(text: str) -> None:
    """The form alone (flags are checked before any device is touched)."""
    index = text[5:] if text.startswith("cuda:") else "0"
    if text not in ("auto", "cpu", "cuda") and not (text.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")


def resolve_device(text: str) -> torch.device:
    import torch  # here, not at import: flags are checked (and --help printed) without loading torch

    check_device_text(text)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise ConfigError(
            f"--device {text}: CUDA is not available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}; no GPU or driver visible). Use --device cpu or auto."
        )
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def describe_device(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
