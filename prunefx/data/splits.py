"""Training and evaluation data for recovery training (knowledge distillation) of pruned models.

The named data sets ("fashion-mnist", "imagenet-sample") and ImageFolder folders, each as `DataSplits` of
torch DataLoaders with static batch sizes (prunefx/data/load.py's `load_data` picks one by name or path,
the layouts on disk and the Fashion-MNIST scenes among them) (prunefx/data/batches.py: shuffled training batches drop the last, incomplete
batch; evaluation batches are padded with images labelled -1, which `accuracy` leaves out).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from prunefx.assets import imagenet_transform, load_imagenet_batch
from prunefx.data import fashion_mnist
from prunefx.data.augment import RandomCropFlip
from prunefx.data.batches import IGNORED_LABEL, StaticBatches, derive_seed
from prunefx.data.dataset_files import confined
from prunefx.data.image_files import open_image
from prunefx.data.normalise import NormalizeBatch, pixel_statistics
from prunefx.data.tensor_samples import tensor_batches
from prunefx.graph.errors import PrunefxError

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = [
    "DETECTION", "DataSplits", "FASHION_MNIST", "FASHION_MNIST_DET", "FASHION_MNIST_SEG",
    "IGNORED_LABEL", "IMAGENET_SAMPLE", "NormalizeBatch", "SEGMENTATION", "StaticBatches",
    "accuracy", "derive_seed", "fashion_mnist_data", "tensor_batches",
    "image_folder_data", "image_folder_split", "imagenet_class_names",
    "imagenet_sample_data", "imagenet_train_transform", "scene_spec",
    "split_train_validation",
]

FASHION_MNIST = fashion_mnist.NAME
IMAGENET_SAMPLE = "imagenet-sample"
FASHION_MNIST_SEG = "fashion-mnist-seg"
FASHION_MNIST_DET = "fashion-mnist-det"
CLASSIFICATION, SEGMENTATION, DETECTION = "classification", "segmentation", "detection"
_SCENE_TASKS = {FASHION_MNIST_SEG: SEGMENTATION, FASHION_MNIST_DET: DETECTION}


# ---- data sets ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataSplits:
    """The loaders of one data set (None where it has no such split), its class names, the shape of
    one input image (C, H, W) (the model's example input is (batch_size, *input_shape)) and its task:
    classification (labels N), segmentation (labels N x H x W, 0 = background) or detection (labels
    N x max_items x 5: class, x1, y1, x2, y2, rows of -1 where there is no item; a real image without any
    item has class NO_ITEMS (-2) in its first row, a padding copy -1 everywhere, a crowd region of class c has
    class CROWD - c, -3 - c)."""

    train: StaticBatches | None
    val: StaticBatches | None
    test: StaticBatches | None
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    task: str = CLASSIFICATION
    labelled: bool = True  # False: images without labels, scored against the dense model (prunefx/data/unlabelled.py)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def evaluation(self) -> StaticBatches | None:
        """The split to evaluate on during training: validation if there is one, else test."""
        return self.val if self.val is not None else self.test


def split_train_validation(count: int, validation: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), both sorted: a seeded random `validation` of `count`."""
    if not 0 <= validation < count:
        raise PrunefxError(f"validation must hold 0 to {count - 1} of the {count} training images, "
                           f"got {validation}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[validation:].sort().values, order[:validation].sort().values


def fashion_mnist_data(batch_size: int, *, validation: int = 5000, augment: bool = True, channels: int = 1,
                       seed: int = 0, root: str | Path | None = None, crop_padding: int = 2,
                       num_workers: int = 0) -> DataSplits:
    """Fashion-MNIST from the Debian package: `validation` images held out of the 60000 training
    images (seeded; never from the test set; 0 -> no validation split), normalised with the
    training mean and std; train shuffled and, with `augment`, randomly cropped after
    `crop_padding` pixels of zero padding and flipped (RandomCropFlip: torchvision's RandomCrop and
    RandomHorizontalFlip, one vectorised call per batch, each image's draw seeded per epoch). `channels=3` repeats
    the gray channel. `num_workers` 0 by default: the images are decoded already, a worker would only crop and flip."""
    if channels not in (1, 3):
        raise PrunefxError(f"Fashion-MNIST channels must be 1 (gray) or 3 (gray repeated), got {channels}")
    train_images, train_labels = fashion_mnist.load_fashion_mnist("train", root)
    test_images, test_labels = fashion_mnist.load_fashion_mnist("test", root)
    # Kept as uint8 (47 MB for the training set) and normalised per batch: float copies would be 4x.
    train_images, test_images = train_images[:, None], test_images[:, None]
    train_index, val_index = split_train_validation(len(train_images), validation, seed)
    prepare = NormalizeBatch([fashion_mnist.MEAN], [fashion_mnist.STD], channels=channels)
    crop_flip = RandomCropFlip(crop_padding) if augment else None
    loaders = {"prepare": prepare, "num_workers": num_workers}
    train = tensor_batches(train_images[train_index], train_labels[train_index], batch_size, shuffle=True,
                           augment=crop_flip, seed=seed, **loaders)
    val = None
    if validation:
        val = tensor_batches(train_images[val_index], train_labels[val_index], batch_size, shuffle=False, **loaders)
    test = tensor_batches(test_images, test_labels, batch_size, shuffle=False, **loaders)
    return DataSplits(train, val, test, fashion_mnist.CLASSES, (channels, 28, 28))


def scene_spec(spec: str | Path) -> tuple[str, int] | None:
    """(task, canvas size) for "fashion-mnist-seg[:SIZE]" or "fashion-mnist-det[:SIZE]", else None."""
    name, _, size = str(spec).partition(":")
    if name not in _SCENE_TASKS:
        return None
    if size and not (size.isdigit() and int(size) > 0):
        raise PrunefxError(f"{spec!r}: the canvas size after ':' must be a positive number of pixels")
    return _SCENE_TASKS[name], int(size) if size else 128


def imagenet_train_transform(size: int = 224) -> v2.Compose:
    """The usual ImageNet training augmentation: random resized crop, horizontal flip, normalise."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(*pixel_statistics()),
    ])


def load_image(path: str) -> Image.Image:
    """One image as RGB. A file that does not decode (truncated, or not an image at all) stops the run
    with its path: skipping it would silently change the data a model is trained or calibrated on,
    and the user can remove or replace the file once it is named. Pixel and size limits:
    prunefx/data/image_files.py."""
    return open_image(path)


def image_folder_data(path: str | Path, batch_size: int, *, image_size: int = 224, augment: bool = True,
                      seed: int = 0, num_workers: int = 0) -> DataSplits:
    """Users' images in ImageFolder layout: `path/train/<class>/*` and `path/val/<class>/*` (and
    `path/test/<class>/*` if present; test alone in place of val). Train: random resized crop + flip (with `augment`), shuffled;
    val/test: resize + centre crop. All normalised with the ImageNet mean and std. Class indices are
    the sorted class folder names of train/."""
    root = Path(path)
    if not root.is_dir():
        raise PrunefxError(f"data folder {root} does not exist")
    # a train split, and a val or test split to score on
    missing = [name for name in ("train", "val") if not (root / name).is_dir()
               and not (name == "val" and (root / "test").is_dir())]
    if missing:
        raise PrunefxError(f"data folder {root} lacks {' and '.join(f'{name}/' for name in missing)}: "
                           f"expected {root}/train/<class>/* and {root}/val/<class>/* (or test/<class>/*)")
    for name in ("train", "val", "test"):
        if (root / name).is_dir():  # a linked split folder is followed only while it stays in the data folder
            confined(root / name, root, "image folder")
    from prunefx.data.class_folders import class_folder_split, class_folders
    from prunefx.data.samples import image_size_of

    classes = class_folders(root / "train")
    train_transform = imagenet_train_transform(image_size) if augment else imagenet_transform(image_size)
    eval_transform = imagenet_transform(image_size)
    folders = {name: class_folder_split(root / name, classes, train_transform if name == "train" else eval_transform)
               for name in ("train", "val", "test") if (root / name).is_dir()}
    for folder in folders.values():  # every image's header, before any training (a bad file hours in stops a run)
        for path, _ in folder.samples:
            image_size_of(Path(path))
    train = StaticBatches(folders["train"], batch_size, shuffle=True, seed=seed, num_workers=num_workers)
    val, test = (StaticBatches(folders[name], batch_size, shuffle=False, num_workers=num_workers)
                 if name in folders else None for name in ("val", "test"))
    return DataSplits(train, val, test, tuple(classes), (3, image_size, image_size))


def image_folder_split(split: str | Path, batch_size: int, *, image_size: int = 224, shuffle: bool = False,
                       seed: int = 0, num_workers: int = 0) -> StaticBatches:
    """One split of the ImageFolder layout on its own (`split/<class>/*`, e.g. `path/train` for
    calibration images), resized and centre-cropped like evaluation (no augmentation); `shuffle`
    (seeded) mixes the classes and drops the last, incomplete batch."""
    split = Path(split)
    if not split.is_dir():
        raise PrunefxError(f"image folder {split} does not exist")
    from prunefx.data.class_folders import class_folder_split, class_folders

    folder = class_folder_split(split, class_folders(split), imagenet_transform(image_size))
    return StaticBatches(folder, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, by class index (from torchvision's weight metadata, offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_sample_data(batch_size: int, image_size: int = 224) -> DataSplits:
    """The 20 offline ImageNet validation images (foolbox's) as a test loader only (too few to train
    on); labels are ImageNet class indices."""
    images, labels = load_imagenet_batch(image_size)
    test = tensor_batches(images, labels, batch_size, shuffle=False)
    return DataSplits(None, None, test, imagenet_class_names(), (3, image_size, image_size))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct top-1 predictions, images counted), leaving out padding (label -1)."""
    counted = labels != IGNORED_LABEL
    correct = (logits.argmax(dim=1) == labels) & counted
    return int(correct.sum()), int(counted.sum())
