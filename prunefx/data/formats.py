"""Users' data sets on disk, in the layouts they already have, detected from the path or named:

    imagefolder  ROOT/train/<class>/*, ROOT/val/<class>/*            classification (prunefx/data/splits.py)
    coco         ROOT/annotations/instances_<split>.json + images   detection (prunefx/data/coco.py)
    yolo         an Ultralytics data yaml, or a folder with data.yaml detection (prunefx/data/yolo.py)
    masks        ROOT/images/<split>/* + ROOT/masks/<split>/*.png   segmentation (prunefx/data/masks.py)
    images       ROOT/train/**, ROOT/val/** without labels           distillation only (prunefx/data/unlabelled.py)

Every split streams from disk through torch's DataLoader (`num_workers` decoding processes) in static
batches (prunefx/data/batches.py: training drops the last incomplete batch, evaluation pads it with label -1).
Images of the dense formats are resized to one size, `image_size` (S or (H, W); default: the first
training image's size), since the captured graph takes one shape. All annotations, label ranges and image
headers are checked while the data set is opened, before any training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prunefx.data.batches import StaticBatches
from prunefx.data.coco import coco_splits, is_coco
from prunefx.data.format_names import COCO, FORMATS, IMAGEFOLDER, MASKS, UNLABELLED, YOLO
from prunefx.data.masks import DEFAULT_IGNORE_INDEX, is_mask_folder, mask_splits
from prunefx.data.samples import LabelledImages, SplitFiles, check_headers
from prunefx.data.splits import DETECTION, SEGMENTATION, DataSplits, image_folder_data
from prunefx.data.unlabelled import unlabelled_data
from prunefx.data.yolo import yaml_file, yolo_splits
from prunefx.graph.errors import PrunefxError, printable

_log = logging.getLogger(__name__)

_TASKS = {COCO: DETECTION, YOLO: DETECTION, MASKS: SEGMENTATION}


def default_workers() -> int:
    """Decoding processes by default: one per core this process may run on, at most 8."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def detect_format(path: Path) -> str:
    """The layout of the data at `path` (see the module docstring)."""
    if not path.exists():
        raise PrunefxError(f"data {path} does not exist")
    if dense_format(path) is not None:
        return dense_format(path)
    if (path / "train").is_dir():
        return IMAGEFOLDER
    raise PrunefxError(f"cannot tell the layout of {path}: expected an ImageFolder (train/<class>/), COCO "
                       f"(annotations/instances_*.json), YOLO (data.yaml) or masks (images/train/ + masks/train/); "
                       f"name it with --data-format")


def dense_format(path: Path) -> str | None:
    """COCO, YOLO or masks if `path` holds that layout, else None (nothing raised)."""
    if yaml_file(path) is not None:
        return YOLO
    if is_coco(path):
        return COCO
    return MASKS if is_mask_folder(path) else None


def _size(image_size: int | tuple[int, int] | None, train: SplitFiles) -> tuple[int, int]:
    first = check_headers(train)
    if image_size is None:
        return first
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise PrunefxError(f"image size must be S or (H, W) of positive pixels, got {image_size!r}")
    return size


def read_format(path: Path, data_format: str, *, ignore_index: int = DEFAULT_IGNORE_INDEX,
                palette: str | Path | None = None) -> tuple[dict[str, SplitFiles], tuple[str, ...]]:
    """role -> split files, and the class names, of a dense-task data set."""
    if data_format == COCO:
        return coco_splits(path)
    if data_format == YOLO:
        return yolo_splits(path)
    return mask_splits(path, ignore_index, palette)


def format_data(path: str | Path, batch_size: int, *, data_format: str | None = None,
                image_size: int | tuple[int, int] | None = None, channels: int = 3, seed: int = 0,
                num_workers: int | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                augment: bool = True, mean_std: tuple[list[float], list[float]] | None = None,
                palette: str | Path | None = None) -> DataSplits:
    """The data set at `path` as DataSplits (train shuffled, val and test in order); dense formats'
    pixels / 255 are normalised with `mean_std` (default ImageNet's: what pretrained encoders expect).
    `palette`: the colour -> class file of colour masks (default: the masks folder's palette.txt, if any)."""
    path = Path(path).expanduser()
    data_format = data_format or detect_format(path)
    if data_format not in FORMATS:
        raise PrunefxError(f"unknown data format {data_format!r}: use one of {', '.join(FORMATS)}")
    if palette is not None and data_format != MASKS:
        raise PrunefxError(f"a palette maps mask colours to classes: it needs mask folders, not {data_format} data")
    workers = default_workers() if num_workers is None else num_workers
    if data_format == IMAGEFOLDER:
        side = image_size if isinstance(image_size, int) else 224
        return image_folder_data(path, batch_size, image_size=side, augment=augment, seed=seed, num_workers=workers)
    if channels not in (1, 3):
        raise PrunefxError(f"images are read gray (1 channel) or RGB (3), not {channels} channels")
    if data_format == UNLABELLED:
        return unlabelled_data(path, batch_size, image_size=image_size, channels=channels, seed=seed,
                               num_workers=workers)
    splits, names = read_format(path, data_format, ignore_index=ignore_index, palette=palette)
    if "val" not in splits and "test" not in splits:  # an unlabelled test split is left out: nothing to score on
        raise PrunefxError(f"{data_format} data {printable(str(path))} has no labelled val or test split to score "
                           "the model on; give it one (a val split of labelled images)")
    _warn_of_trained_images(splits)
    size = _size(image_size, splits["train"])
    for role, split in splits.items():
        if role != "train":
            check_headers(split)  # every image's header, before any training
    most = max((len(b) for split in splits.values() for b in split.boxes or []), default=0)
    loaders = {role: StaticBatches(LabelledImages(split, size=size, channels=channels, max_items=max(most, 1),
                                                  ignore_index=ignore_index, mean_std=mean_std),
                                   batch_size, shuffle=role == "train", seed=seed, num_workers=workers)
               for role, split in splits.items()}
    return DataSplits(loaders["train"], loaders.get("val"), loaders.get("test"), names, (channels, *size),
                      _TASKS[data_format])


def _warn_of_trained_images(splits: dict[str, SplitFiles]) -> None:
    """A validation or test image that is also a training image (a data yaml's `val:` naming the train folder, COCO's
    trainval beside its val) scores the model on what it learnt: said, since small demos do it on purpose."""
    trained = {os.path.realpath(image) for image in splits["train"].images}
    for role, split in splits.items():
        shared = [image for image in split.images if os.path.realpath(image) in trained] if role != "train" else []
        if shared:
            _log.warning(f"{len(shared)} of the {len(split.images)} {role} images are training images too (first "
                         f"{printable(str(shared[0]))}): their scores are of images the model trained on")
