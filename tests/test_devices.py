"""Device choice on a machine without a GPU: auto picks the CPU, asking for CUDA fails with what to do."""

from __future__ import annotations

import pytest
import torch

from fedtl.common.devices import describe_device, resolve_device
from fedtl.common.errors import ConfigError
from fedtl.common.training import _autocast


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("text", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_says_what_to_do(text: str) -> None:
    with pytest.raises(ConfigError, match="--device cpu or auto"):
        resolve_device(text)


def test_nonsense_device_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--device 'gpu'"):
        resolve_device("gpu")


def test_amp_only_applies_on_cuda() -> None:
    with _autocast(torch.device("cpu"), amp=True):
        assert not torch.is_autocast_enabled()


def test_client_refuses_cuda_at_start_up_without_a_gpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from fedtl.client.__main__ import main

    assert main(["--device", "cuda", "--data", "synthetic", "--workdir", str(tmp_path)]) == 2
