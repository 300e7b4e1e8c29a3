"""Compact classifiers for small gray images (Fashion-MNIST: 28x28, one channel, ten classes).

Four standard designs, scaled for 28x28 inputs and written for this project:
  resnet20, resnet56   the CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition"
                       (2016), section 4.2: depth 6n+2, basic blocks of 16/32/64 channels
  mobilenetv2_small    the inverted residual network of Sandler et al., "MobileNetV2: Inverted Residuals
                       and Linear Bottlenecks" (2018), with a stride-1 stem and fewer, narrower stages
  vit_tiny_fmnist      a small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
                       2021): 4x4 patches, class token, learned position embedding, pre-norm blocks
  convnext_fmnist      a small ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022): widths 32-64-128

Every builder takes `in_channels` (default 1) and `num_classes` (default 10); the ViT also takes
`image_size` (default 28), which sizes its position embedding. Build them by reference through
`prunefx.models.build_model("prunefx:NAME")`.
One file per design; this file is the registry `prunefx:NAME` reads.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunefx.models.small.convnext import convnext_fmnist
from prunefx.models.small.layers import FMNIST_CHANNELS, FMNIST_CLASSES, FMNIST_IMAGE_SIZE
from prunefx.models.small.mobilenet import mobilenetv2_small
from prunefx.models.small.resnet import resnet20, resnet56, resnet_cifar
from prunefx.models.small.vit import vit_tiny_fmnist

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


__all__ = ["FIXED_INPUT_SIZE", "FMNIST_CHANNELS", "FMNIST_CLASSES", "FMNIST_IMAGE_SIZE", "MODELS", "convnext_fmnist",
           "list_models", "mobilenetv2_small", "resnet20", "resnet56", "resnet_cifar", "vit_tiny_fmnist"]
