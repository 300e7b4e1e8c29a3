"""The data a name or a path stands for: `load_data(spec, batch_size)` picks "fashion-mnist",
"imagenet-sample", a data set on disk (ImageFolder with train/ and val/, optionally test/; COCO; YOLO; image
and mask folders: prunefx/data/formats.py) or the Fashion-MNIST scenes for dense tasks,
"fashion-mnist-seg[:SIZE]" (per-pixel labels) and "fashion-mnist-det[:SIZE]" (boxes), SIZE the canvas side
(default 128; prunefx/data/fashion_mnist_scenes.py). It sits above every reader, so none imports it.
"""

from __future__ import annotations

from pathlib import Path

from prunefx.data.formats import format_data
from prunefx.data.scene_data import scene_data
from prunefx.data.splits import (
    FASHION_MNIST,
    FASHION_MNIST_DET,
    FASHION_MNIST_SEG,
    IMAGENET_SAMPLE,
    SEGMENTATION,
    DataSplits,
    fashion_mnist_data,
    imagenet_sample_data,
    scene_spec,
)
from prunefx.graph.errors import PrunefxError


def fashion_mnist_scene_data(batch_size: int, *, task: str = SEGMENTATION, size: int = 128,
                             train_canvases: int = 6000, val_canvases: int = 500, test_canvases: int = 1000,
                             validation: int = 5000, channels: int = 3, seed: int = 0,
                             root: str | Path | None = None, scene: dict | None = None,
                             num_workers: int | None = None) -> DataSplits:
    """Fashion-MNIST scenes (prunefx/data/fashion_mnist_scenes.py) for `task` (segmentation or detection):
    train canvases from the training items less `validation` held out (seeded), val canvases from those
    held-out items (none when `validation` is 0), test canvases from the test items. `scene` holds further
    SceneConfig fields (min_items, max_items, item_sizes, threshold, gap). Not augmented: every canvas is
    already a random composition. `channels=3` repeats the gray channel for RGB models. The canvases are
    written to files (mask folders, COCO JSON) and read back like users' data (prunefx/data/scene_data.py)."""
    return scene_data(batch_size, task=task, size=size, train_canvases=train_canvases, val_canvases=val_canvases,
                      test_canvases=test_canvases, validation=validation, channels=channels, seed=seed, root=root,
                      scene=scene, num_workers=num_workers)


def _looks_like_path(spec: str) -> bool:
    return Path(spec).exists() or any(mark in spec for mark in ("/", "\\", "~")) or spec.startswith(".")


def load_data(spec: str | Path, batch_size: int, **options) -> DataSplits:
    """`spec`: "fashion-mnist", "imagenet-sample", "fashion-mnist-seg[:SIZE]", "fashion-mnist-det[:SIZE]"
    or the path of an ImageFolder-layout folder; `options` go to `fashion_mnist_data`,
    `imagenet_sample_data`, `fashion_mnist_scene_data` or, for a path, `data_formats.format_data`
    (ImageFolder, COCO JSON, YOLO or mask folders, detected from the path or named by `data_format`)."""
    text = str(spec)
    if text == FASHION_MNIST:
        return fashion_mnist_data(batch_size, **options)
    scene = scene_spec(text)
    if scene is not None:
        task, size = scene
        return fashion_mnist_scene_data(batch_size, task=task, size=size, **options)
    if text == IMAGENET_SAMPLE:
        return imagenet_sample_data(batch_size, **options)
    if isinstance(spec, Path) or _looks_like_path(text):
        return format_data(Path(text).expanduser(), batch_size, **options)
    raise PrunefxError(f"unknown data {text!r}: use {FASHION_MNIST!r}, {IMAGENET_SAMPLE!r}, {FASHION_MNIST_SEG!r}, "
                       f"{FASHION_MNIST_DET!r} or the path of a data set on disk (an ImageFolder with train/<class>/ "
                       f"and val/<class>/, COCO annotations/, a YOLO data.yaml, or images/ + masks/ folders)")
