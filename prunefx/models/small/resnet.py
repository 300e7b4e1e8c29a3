"""ResNet for small images: the CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition"
(2016), section 4.2: depth 6n+2, basic blocks of 16/32/64 channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunefx.models.small.layers import FMNIST_CHANNELS, FMNIST_CLASSES, conv_bn, init_cnn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: identity, or a strided 1x1 conv-BN projection where the
    width or resolution changes (the paper's option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """3x3 stem conv to 16 channels, three stages of `blocks_per_stage` basic blocks at 16, 32 and 64
    channels (the last two start with stride 2), global average pooling and a linear classifier."""

    WIDTHS = (16, 32, 64)

    def __init__(self, blocks_per_stage: int, *, in_channels: int = FMNIST_CHANNELS,
                 num_classes: int = FMNIST_CLASSES):
        super().__init__()
        self.stem = conv_bn(in_channels, self.WIDTHS[0], 3)
        stages, width = [], self.WIDTHS[0]
        for index, out_width in enumerate(self.WIDTHS):
            blocks = [BasicBlock(width if i == 0 else out_width, out_width, 2 if index > 0 and i == 0 else 1)
                      for i in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            width = out_width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(width, num_classes)
        init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_cifar(depth: int, *, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallResNet:
    """The CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110): n basic blocks per stage."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...), not {depth}")
    return SmallResNet((depth - 2) // 6, in_channels=in_channels, num_classes=num_classes)


def resnet20(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallResNet:
    """ResNet-20: three basic blocks per stage, about 0.27 M parameters."""
    return resnet_cifar(20, in_channels=in_channels, num_classes=num_classes)


def resnet56(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallResNet:
    """ResNet-56: nine basic blocks per stage, about 0.86 M parameters."""
    return resnet_cifar(56, in_channels=in_channels, num_classes=num_classes)
