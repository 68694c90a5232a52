"""Small models for the ``clfast train`` command: an MLP and a CNN sized from the input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_int


class SimpleMLP(nn.Module):
    """Flatten, then ``hidden_layers`` x (Linear, ReLU, Dropout), then a Linear classifier.

    Args:
        input_shape: shape of one input (without the batch dimension), e.g. ``(1, 8, 8)``.
        n_classes: number of output logits.
        hidden_size: width of the hidden layers.
        hidden_layers: number of hidden layers (>= 1).
        dropout: dropout probability after each hidden layer.
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, hidden_size: int = 256, hidden_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("n_classes", n_classes), ("hidden_size", hidden_size), ("hidden_layers", hidden_layers)):
            check_int(name, value, low=1)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SimpleCNN(nn.Module):
    """Two 3x3 conv blocks (32 and 64 channels, the second with stride 2), global average pooling and a
    Linear classifier. Takes ``(C, H, W)`` inputs; a flat input of a square number of pixels is viewed as
    one channel.
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) == 1:
            side = math.isqrt(shape[0])
            if side * side != shape[0]:
                raise ValueError(f"SimpleCNN needs (C, H, W) inputs or a square number of features, got {shape}")
            shape = (1, side, side)
        if len(shape) != 3:
            raise ValueError(f"SimpleCNN needs (C, H, W) inputs, got {shape}")
        self.input_shape = shape
        self.features = nn.Sequential(
            nn.Conv2d(shape[0], 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(x.shape[0], *self.input_shape)))


MODELS = {"mlp": SimpleMLP, "cnn": SimpleCNN}
"""Model builders by command-line name, called as ``MODELS[name](input_shape, n_classes)``."""
