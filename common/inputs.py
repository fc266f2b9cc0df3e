"""Model inputs for a set of examples, either raw images or the frozen prefix's cached outputs.

Training and evaluation only ask for `batch(idx)` and which stage the batch enters the
network at, so the cached path and the full path share one code path and stay exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fedtl.common.batches import InputTransform
from fedtl.common.data import ImageSet


@dataclass
class Inputs(ABC):
    labels: torch.Tensor
    start_stage: int  # the stage a batch enters the network at

    def __len__(self) -> int:
        return int(self.labels.numel())

    @abstractmethod
    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The model inputs for these example indexes."""


@dataclass
class ImageInputs(Inputs):
    images: torch.Tensor  # uint8 N x C x H x W, on the compute device
    transform: InputTransform

    @staticmethod
    def of(data: ImageSet, transform: InputTransform, device: torch.device) -> ImageInputs:
        images = data.images
        if device.type == "cuda":
            images = images.pin_memory().to(device, non_blocking=True)
        return ImageInputs(labels=data.labels.to(device), start_stage=0, images=images, transform=transform)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(self.images[idx.to(self.images.device)], generator)


@dataclass
class FeatureInputs(Inputs):
    features: torch.Tensor  # outputs of stages[:start_stage], float

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.features[idx.to(self.features.device)]

    def subset(self, indices: torch.Tensor) -> FeatureInputs:
        return FeatureInputs(labels=self.labels[indices], start_stage=self.start_stage, features=self.features[indices])
