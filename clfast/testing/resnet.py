"""A ResNet-18 laid out like torchvision's (torchvision is not a dependency), for tests and benchmarks.

Same children in the same order (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` … ``layer4``,
``avgpool``, ``fc``), the same parameter names and shapes at ``width=64`` (``model_shapes.resnet18()``), and
the same ``forward``, including the functional ``torch.flatten(x, 1)`` between ``avgpool`` and ``fc``, which
is what makes a split of it need more than the module tree. ``width`` scales every stage so that tests can run
a small one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN pairs and a residual add; ``downsample`` (1×1 conv + BN) when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, four stages of :class:`BasicBlock` (``blocks`` per stage), global pool, linear classifier."""

    def __init__(self, blocks: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 1000,
                 width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(f"width, num_classes and in_channels must be >= 1, got {width}, {num_classes}, "
                             f"{in_channels}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = width
        for stage, n in enumerate(blocks):
            out = width * 2**stage
            stride = 1 if stage == 0 else 2
            layers = [BasicBlock(c, out, stride)] + [BasicBlock(out, out) for _ in range(n - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            c = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-18: two blocks per stage; ``width`` channels in the stem and first stage (64 in torchvision)."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width, in_channels=in_channels)
