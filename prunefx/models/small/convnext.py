"""ConvNeXt for small images (Liu et al., "A ConvNet for the 2020s", 2022): depthwise 7x7 blocks with
channel LayerNorm and inverted 1x1 bottlenecks."""

from __future__ import annotations

import torch
from torch import nn

from prunefx.models.small.layers import FMNIST_CHANNELS, FMNIST_CLASSES


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's "channels_first" norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + gamma * PW2(GELU(PW1(LN(DW7x7(x))))), pointwise layers as 1x1 convs, expansion 4."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = ChannelLayerNorm(dim)
        self.pwconv1 = nn.Conv2d(dim, 4 * dim, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))


class SmallConvNeXt(nn.Module):
    """2x2/2 patchify stem, stages of ConvNeXt blocks separated by LN + 2x2/2 downsampling convs,
    global average pooling, LayerNorm and a linear classifier. 28x28 -> 14 -> 7 -> 3."""

    def __init__(self, *, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                 dims: tuple[int, ...] = (32, 64, 128), depths: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], 2, stride=2), ChannelLayerNorm(dims[0])]
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            if stage:
                layers += [ChannelLayerNorm(dims[stage - 1]), nn.Conv2d(dims[stage - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean((2, 3))))


def convnext_fmnist(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallConvNeXt:
    """ConvNeXt for 28x28 inputs: widths 32-64-128, two blocks per stage."""
    return SmallConvNeXt(in_channels=in_channels, num_classes=num_classes)
