"""Fashion-MNIST scenes: segmentation and detection data made from real Fashion-MNIST items.

No labelled segmentation or detection set installs offline, so scenes are composed from real images: each
black canvas holds a few Fashion-MNIST items, resized and pasted without overlap, with per-pixel labels
(`masks`), boxes (`boxes`) and where each item came from. Train, validation and test canvases never share
items; the same seed gives the same scenes. The layout of labels and boxes: see docs/reference/data.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from prunefx.data import fashion_mnist
from prunefx.data.batches import derive_seed
from prunefx.graph.errors import PrunefxError

CLASSES = ("background", *fashion_mnist.CLASSES)
NUM_CLASSES = len(CLASSES)  # 11: background + the 10 Fashion-MNIST classes
NO_ITEM = -1
_ATTEMPTS = 50  # random placements tried per item before it is left out
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How canvases are composed (see the module docstring). `item_sizes` is the (smallest, largest) side
    of a pasted item in pixels; the default scales with the canvas: about 0.2 to 0.45 of its side."""

    size: int = 128
    min_items: int = 2
    max_items: int = 6
    item_sizes: tuple[int, int] | None = None
    threshold: int = 64
    gap: int = 1

    def __post_init__(self) -> None:
        if self.item_sizes is None:
            object.__setattr__(self, "item_sizes", (max(8, round(self.size * 0.2)), max(8, round(self.size * 0.45))))
        low, high = self.item_sizes
        if not 8 <= self.size <= 4096:
            raise PrunefxError(f"scene size must be 8 to 4096 pixels, got {self.size}")
        if not 1 <= self.min_items <= self.max_items:
            raise PrunefxError(f"scene items must satisfy 1 <= min_items <= max_items, got "
                               f"{self.min_items} and {self.max_items}")
        if not 4 <= low <= high <= self.size:
            raise PrunefxError(f"item sizes must satisfy 4 <= smallest <= largest <= canvas size {self.size}, "
                               f"got {low} and {high}")
        if not 0 <= self.threshold < 255:
            raise PrunefxError(f"the label threshold is a uint8 intensity in [0, 255), got {self.threshold}")
        # The smallest items must fit side by side, or the canvases could hold fewer than min_items.
        per_row = (self.size + self.gap) // (low + self.gap)
        if per_row * per_row < self.min_items:
            raise PrunefxError(f"{self.min_items} items of {low} pixels do not fit on a {self.size}-pixel canvas")


@dataclasses.dataclass(frozen=True)
class Scenes:
    """Canvases of one split: images N x 1 x H x W uint8, masks N x H x W int64 (0 = background,
    1 + class), boxes N x max_items x 5 int64 (class, x1, y1, x2, y2; -1 rows when absent), sources
    N x max_items int64 (index of each item in the pool it came from; -1 when absent) and squares
    N x max_items x 3 int64 (top, left, side of the pasted item; -1 when absent)."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    sources: torch.Tensor
    squares: torch.Tensor
    split: str
    config: SceneConfig

    def __len__(self) -> int:
        return len(self.images)


def _resized(item: np.ndarray, side: int) -> np.ndarray:
    """A 28 x 28 uint8 item as side x side uint8 (bilinear, antialiased when shrinking)."""
    tensor = torch.from_numpy(item).float()[None, None]
    resized = F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _free(square: tuple[int, int, int], placed: list[tuple[int, int, int]], gap: int) -> bool:
    """Whether `square` (top, left, side) keeps `gap` pixels from every placed square."""
    top, left, side = square
    return all(top >= y + s + gap or y >= top + side + gap or left >= x + s + gap or x >= left + side + gap
               for y, x, s in placed)


def _canvas(pool: np.ndarray, classes: np.ndarray, config: SceneConfig, rng: np.random.Generator):
    """One canvas: (image H x W, mask H x W, boxes k x 5, squares k x 3, sources k), items from `pool`."""
    size, (low, high) = config.size, config.item_sizes
    image = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.int64)
    boxes, sources, placed = [], [], []
    for _ in range(int(rng.integers(config.min_items, config.max_items + 1))):
        source = int(rng.integers(len(pool)))
        for _ in range(_ATTEMPTS):
            side = int(rng.integers(low, high + 1))
            square = (int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1)), side)
            if _free(square, placed, config.gap):
                break
        else:
            continue  # no room left for this item
        patch = _resized(pool[source], side)
        on = patch > config.threshold
        if not on.any():  # too faint to label once shrunk: leave it out rather than paste an unlabelled item
            continue
        top, left, _ = square
        placed.append(square)
        image[top:top + side, left:left + side] = patch
        mask[top:top + side, left:left + side] = np.where(on, classes[source] + 1, 0)
        rows, columns = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
        boxes.append((classes[source], left + columns[0], top + rows[0], left + columns[-1] + 1, top + rows[-1] + 1))
        sources.append(source)
    return image, mask, boxes, placed, sources


def make_scenes(images: torch.Tensor, labels: torch.Tensor, count: int, *, split: str = "train",
                config: SceneConfig = SceneConfig(), seed: int = 0) -> Scenes:
    """`count` canvases composed from the items `images` (N x 28 x 28 uint8) with class `labels` (N),
    deterministic from (seed, split)."""
    if split not in _SPLIT_STREAMS:
        raise PrunefxError(f"scene split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
    if count < 1:
        raise PrunefxError(f"a scene split needs at least one canvas, got {count}")
    if images.dim() != 3 or images.dtype != torch.uint8 or len(images) != len(labels) or len(images) == 0:
        raise PrunefxError(f"scene items must be N x H x W uint8 images with N labels, got images "
                           f"{tuple(images.shape)} {images.dtype} and labels {tuple(labels.shape)}")
    pool, classes = images.numpy(), labels.long().numpy()
    rng = np.random.default_rng(derive_seed(seed, _SPLIT_STREAMS[split]))
    size, most = config.size, config.max_items
    all_images = np.zeros((count, 1, size, size), np.uint8)
    all_masks = np.zeros((count, size, size), np.int64)
    all_boxes = np.full((count, most, 5), NO_ITEM, np.int64)
    all_sources = np.full((count, most), NO_ITEM, np.int64)
    all_squares = np.full((count, most, 3), NO_ITEM, np.int64)
    for n in range(count):
        image, mask, boxes, squares, sources = _canvas(pool, classes, config, rng)
        all_images[n, 0], all_masks[n] = image, mask
        if boxes:
            all_boxes[n, :len(boxes)] = boxes
            all_squares[n, :len(squares)] = squares
            all_sources[n, :len(sources)] = sources
    return Scenes(*(torch.from_numpy(a) for a in (all_images, all_masks, all_boxes, all_sources, all_squares)),
                  split=split, config=config)


def box_list(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One canvas's padded boxes (max_items x 5) as (xyxy float boxes k x 4, classes k): the rows that
    hold an item, in the format detection metrics take."""
    present = boxes[:, 0] != NO_ITEM
    return boxes[present, 1:].float(), boxes[present, 0]
