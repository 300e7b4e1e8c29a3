"""Read Fashion-MNIST from the IDX files of the Debian package dataset-fashion-mnist.

torchvision's FashionMNIST class would try to download when a file is missing; these machines
have no network, so the gzipped IDX files are parsed directly with numpy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from prunefx.graph.errors import PrunefxError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "PRUNEFX_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NAME = "fashion-mnist"  # as data is named on the command line and in the API
# Pixel mean and standard deviation of the 60000 training images scaled to [0, 1].
MEAN = 0.2860
STD = 0.3530
_IDX_UINT8 = 0x08


class DatasetError(PrunefxError):
    """Fashion-MNIST is missing or one of its files is malformed."""


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """`root`, else $PRUNEFX_FASHION_MNIST, else the Debian package's folder; it must exist."""
    folder = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    if not folder.is_dir():
        raise DatasetError(
            f"Fashion-MNIST folder {folder} not found: apt-get install dataset-fashion-mnist")
    return folder


def read_idx(path: str | Path) -> np.ndarray:
    """One gzipped IDX file of unsigned bytes as an array of the shape its header states."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Fashion-MNIST file {path} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as file:
        # bytearray: numpy views of bytes are read-only, and torch warns on those.
        data = bytearray(file.read())
    # Header: two zero bytes, a type code, the number of dimensions, then big-endian int32 sizes.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UINT8:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {values.size} values")
    return values.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 28 x 28 uint8, labels N int64) for split 'train' (60000) or 'test' (10000)."""
    if split not in _FILES:
        raise DatasetError(f"Fashion-MNIST split {split!r} does not exist; use 'train' or 'test'")
    folder = fashion_mnist_root(root)
    image_file, label_file = _FILES[split]
    images = torch.from_numpy(read_idx(folder / image_file))
    # Labels as int64, the dtype torch's losses expect for class indices.
    labels = torch.from_numpy(read_idx(folder / label_file)).long()
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in {split}")
    return images, labels
