"""Not images, not CIFAR-10: scikit-learn's bundled handwritten digits as 64 numbers each, and a small MLP.

    python -m server --model examples.digits:model --data examples.digits:data --train all
    python -m client --data examples.digits:data --allow-plugin examples
"""

import torch
from torch import nn

from fedtl.api import Data, Model


def data() -> Data:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return Data(train=(x[train], y[train]), test=(x[test], y[test]), classes=[str(d) for d in range(10)])


def model(num_classes: int) -> Model:
    return Model(backbone=nn.Sequential(nn.Linear(64, 128), nn.ReLU()), head=nn.Linear(128, num_classes))
