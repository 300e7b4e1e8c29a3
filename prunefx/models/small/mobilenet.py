"""MobileNetV2 for small images: the inverted residual network of Sandler et al., "MobileNetV2: Inverted
Residuals and Linear Bottlenecks" (2018), with a stride-1 stem and fewer, narrower stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunefx.models.small.layers import FMNIST_CHANNELS, FMNIST_CLASSES, conv_bn, init_cnn


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped at expansion 1), 3x3 depthwise, linear 1x1 projection, each with batch
    norm; ReLU6 after the first two. The input is added back when stride is 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = conv_bn(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.expand(x)) if self.expand is not None else x
        out = self.project(F.relu6(self.depthwise(out)))
        return x + out if self.residual else out


class SmallMobileNetV2(nn.Module):
    """Stride-1 3x3 stem, stages of inverted residual blocks given as (expansion, width, blocks,
    stride), a 1x1 conv to `last_width`, global average pooling and a linear classifier."""

    # 28x28 -> 14x14 (24) -> 7x7 (32) -> 4x4 (64, 96)
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))

    def __init__(self, *, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                 stem_width: int = 16, last_width: int = 320, dropout: float = 0.1):
        super().__init__()
        self.stem = conv_bn(in_channels, stem_width, 3)
        blocks, width = [], stem_width
        for expansion, out_width, count, stride in self.STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(width, out_width, stride if i == 0 else 1, expansion))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(width, last_width, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last_width, num_classes)
        init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.head(self.blocks(F.relu6(self.stem(x)))))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def mobilenetv2_small(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallMobileNetV2:
    """MobileNetV2 for 28x28 inputs: widths 16-24-32-64-96, expansion 6, 320-channel head."""
    return SmallMobileNetV2(in_channels=in_channels, num_classes=num_classes)
