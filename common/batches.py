"""Turn uint8 image tensors into normalised model inputs, batch by batch, on the training device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class InputTransform:
    """x/255, optional augmentation (random crop after padding by 1/8 of the size, horizontal flip), bilinear resize, normalise."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    augment: bool = False

    def describe(self) -> str:
        """Identity of the transform, for feature-cache keys."""
        return f"scale255|resize{self.image_size}:bilinear|mean{list(self.mean)}|std{list(self.std)}|augment{self.augment}"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            return images.float()  # not images (a data function's features, tokens, signals): the model takes them as they are
        x = images.float().div_(255.0)
        if self.augment:
            x = _random_crop_flip(x, generator)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)  # the models' layout (models.place)


def _random_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)  # 4 px for CIFAR's 32 px images
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def inference_batch_size(image_size: int) -> int:
    """Images per no-grad forward pass: about 64 images of 64 px. Measured on CPU (bench/README.md):
    EfficientNet-Lite0 at 64 px runs 1.7x faster at batch 64 than at 256, since the activations stay
    in cache, while ResNet-18 at 32 px is fastest at 256."""
    return int(max(8, min(256, 262144 // (image_size * image_size))))


def batches(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over range(n); a seeded generator makes the order reproducible."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
