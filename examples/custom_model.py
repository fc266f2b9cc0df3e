"""Your own model on your own image folder: a small torchvision-built CNN, its backbone frozen under --train head.

    python -m server --model examples.custom_model:build --data path/to/folder --train head
    python -m client --data path/to/folder --allow-plugin examples
The folder holds train/CLASS/*.png and test/CLASS/*.png; the class names are the folder names.
"""

from torch import nn
from torchvision.ops import Conv2dNormActivation

from fedtl.api import Model


def build(num_classes: int) -> Model:
    backbone = nn.Sequential(
        Conv2dNormActivation(3, 16, stride=2),
        Conv2dNormActivation(16, 32, stride=2),
        Conv2dNormActivation(32, 64, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Model(backbone=backbone, head=nn.Linear(64, num_classes), image_size=32)
