"""Compact classifiers for small gray images (Fashion-MNIST: 28x28, one channel, ten classes).

Three standard designs, scaled for 28x28 inputs and written for this project:
  resnet20, resnet56   the CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition"
                       (2016), section 4.2: depth 6n+2, basic blocks of 16/32/64 channels
  mobilenetv2_small    the inverted residual network of Sandler et al., "MobileNetV2: Inverted Residuals
                       and Linear Bottlenecks" (2018), with a stride-1 stem and fewer, narrower stages
  vit_tiny_fmnist      a small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
                       2021): 4x4 patches, class token, learned position embedding, pre-norm blocks

Every builder takes `in_channels` (default 1) and `num_classes` (default 10); the ViT also takes
`image_size` (default 28), which sizes its position embedding. Build them by reference through
`prunefx.models.build_model("prunefx:NAME")`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FMNIST_IMAGE_SIZE = 28
FMNIST_CHANNELS = 1
FMNIST_CLASSES = 10


def _init_cnn(model: nn.Module) -> None:
    """He (fan-out) initialisation for convolutions, unit-scale batch norms, small linear weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution without bias ('same' padding for odd kernels) followed by batch norm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


# ---- ResNet for small images (He et al. 2016, CIFAR variant) -----------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: identity, or a strided 1x1 conv-BN projection where the
    width or resolution changes (the paper's option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = _conv_bn(out_channels, out_channels, 3)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = _conv_bn(in_channels, out_channels, 1, stride) if reshape else nn.Identity()

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
        self.stem = _conv_bn(in_channels, self.WIDTHS[0], 3)
        stages, width = [], self.WIDTHS[0]
        for index, out_width in enumerate(self.WIDTHS):
            blocks = [BasicBlock(width if i == 0 else out_width, out_width, 2 if index > 0 and i == 0 else 1)
                      for i in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            width = out_width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(width, num_classes)
        _init_cnn(self)

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


# ---- MobileNetV2 for small images (Sandler et al. 2018) ----------------------------------------

class InvertedResidual(nn.Module):
    """1x1 expansion (skipped at expansion 1), 3x3 depthwise, linear 1x1 projection, each with batch
    norm; ReLU6 after the first two. The input is added back when stride is 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = _conv_bn(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1)
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
        self.stem = _conv_bn(in_channels, stem_width, 3)
        blocks, width = [], stem_width
        for expansion, out_width, count, stride in self.STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(width, out_width, stride if i == 0 else 1, expansion))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(width, last_width, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last_width, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.head(self.blocks(F.relu6(self.stem(x)))))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def mobilenetv2_small(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES) -> SmallMobileNetV2:
    """MobileNetV2 for 28x28 inputs: widths 16-24-32-64-96, expansion 6, 320-channel head."""
    return SmallMobileNetV2(in_channels=in_channels, num_classes=num_classes)


# ---- Vision Transformer for small images (Dosovitskiy et al. 2021) -----------------------------

class Attention(nn.Module):
    """Multi-head self-attention: one linear makes q, k and v, reshaped to (heads, head_dim) each."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (batch, tokens, 3 * dim) -> (3, batch, heads, tokens, head_dim)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """Patch embedding (a strided conv), a class token, a learned position embedding, `depth` encoder
    blocks, a final LayerNorm and a linear classifier on the class token."""

    def __init__(self, *, image_size: int = FMNIST_IMAGE_SIZE, patch_size: int = 4,
                 in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                 dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        patches = (image_size // patch_size) ** 2
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for parameter in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny_fmnist(*, in_channels: int = FMNIST_CHANNELS, num_classes: int = FMNIST_CLASSES,
                    image_size: int = FMNIST_IMAGE_SIZE) -> SmallViT:
    """ViT with 4x4 patches (49 at 28x28), width 128, depth 6, 4 heads of 32 dims, MLP ratio 2."""
    return SmallViT(image_size=image_size, in_channels=in_channels, num_classes=num_classes)


# ---- ConvNeXt for small images (Liu et al. 2022) ------------------------------------------------

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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnext_fmnist": convnext_fmnist,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2_small": mobilenetv2_small,
    "vit_tiny_fmnist": vit_tiny_fmnist,
}
# Builders whose layers depend on the input size: they take `image_size`.
FIXED_INPUT_SIZE = frozenset({"vit_tiny_fmnist"})


def list_models() -> list[str]:
    return sorted(MODELS)
