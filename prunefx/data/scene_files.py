"""Fashion-MNIST scenes (prunefx/data/fashion_mnist_scenes.py) written to disk in the layouts users' data
comes in, so that prunefx's own dense-task data is read back by the same code as theirs
(prunefx/data/formats.py):

    masks  images/<split>/NNNNN.png (gray) + masks/<split>/NNNNN.png (class ids, 0 = background) + classes.txt
    yolo   images/<split>/NNNNN.png + labels/<split>/NNNNN.txt + data.yaml
    coco   images/<split>/NNNNN.png + annotations/instances_<split>.json (category ids 1..10)

Boxes are the scenes' tight pixel boxes (x2, y2 exclusive): COCO's [x, y, width, height] holds them
exactly; YOLO's centre/size fractions to 6 decimals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import CLASSES, Scenes, box_list
from prunefx.graph.errors import PrunefxError

SCENE_FORMATS = ("masks", "yolo", "coco")


def _name(index: int) -> str:
    return f"{index:05d}.png"


def _write_images(scenes: Scenes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(scenes.images):
        Image.fromarray(image[0].numpy()).save(folder / _name(index))


def _write_masks(scenes: Scenes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, mask in enumerate(scenes.masks):
        Image.fromarray(mask.numpy().astype(np.uint8)).save(folder / _name(index))


def _yolo_rows(boxes, size: int) -> str:
    rows = []
    for (x1, y1, x2, y2), cls in zip(*(t.tolist() for t in box_list(boxes))):
        rows.append(f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                    f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}\n")
    return "".join(rows)


def _write_yolo_labels(scenes: Scenes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, boxes in enumerate(scenes.boxes):
        (folder / _name(index)).with_suffix(".txt").write_text(_yolo_rows(boxes, scenes.config.size))


def coco_json(scenes: Scenes, split: str) -> dict:
    """The split's boxes as a COCO instances file (image ids 1..N in canvas order, category id = class + 1)."""
    size = scenes.config.size
    images = [{"id": i + 1, "file_name": _name(i), "width": size, "height": size} for i in range(len(scenes))]
    annotations = []
    for index, boxes in enumerate(scenes.boxes):
        for (x1, y1, x2, y2), cls in zip(*(t.tolist() for t in box_list(boxes))):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(cls) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(fashion_mnist.CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": f"Fashion-MNIST scenes, {split} split"}}


def write_scenes(splits: dict[str, Scenes], root: str | Path, data_format: str) -> Path:
    """Write each split (role -> Scenes) under `root` in `data_format`; return `root`."""
    if data_format not in SCENE_FORMATS:
        raise PrunefxError(f"scenes are written as {', '.join(SCENE_FORMATS)}, not {data_format!r}")
    root = Path(root)
    for split, scenes in splits.items():
        _write_images(scenes, root / "images" / split)
        if data_format == "masks":
            _write_masks(scenes, root / "masks" / split)
        elif data_format == "yolo":
            _write_yolo_labels(scenes, root / "labels" / split)
        else:
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_json(scenes, split)))
    if data_format == "masks":
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    if data_format == "yolo":
        # no `path:`: Ultralytics and prunefx then resolve the folders from the yaml's own folder
        content = {**{split: f"images/{split}" for split in splits},
                   "names": list(fashion_mnist.CLASSES)}
        (root / "data.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return root
