"""COCO detection layout: `ROOT/annotations/instances_<split>.json` with the images in `ROOT/<split>/`
(or `ROOT/images/<split>/`), as COCO 2017 ships (`instances_train2017.json` + `train2017/`).

A split whose name starts with train, val or test plays that role. Classes are the train file's
categories in id order (COCO's ids have gaps: 1..90 for 80 classes), so class index i is the i-th
category. Crowd annotations (`iscrowd: 1`) are left out of the targets, as COCO's evaluation ignores
them. Boxes are COCO's [x, y, width, height] turned into (x1, y1, x2, y2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prunefx.data.samples import SplitFiles, inside
from prunefx.graph.errors import PrunefxError, first_line
from prunefx.graph.safety.regular_files import read_regular_file

ROLES = ("train", "val", "test")


def is_coco(root: Path) -> bool:
    return root.is_dir() and any((root / "annotations").glob("instances_*.json"))


def annotation_files(root: Path) -> dict[str, Path]:
    """role -> annotation file: the first `instances_<split>.json` (name order) whose split starts with it."""
    files = sorted((root / "annotations").glob("instances_*.json"))
    found = {}
    for path in files:
        split = path.stem.removeprefix("instances_")
        role = next((r for r in ROLES if split.startswith(r)), None)
        if role is not None and role not in found:
            found[role] = path
    if "train" not in found:
        raise PrunefxError(f"COCO data {root} lacks annotations/instances_train*.json (its train split)")
    if "val" not in found and "test" not in found:
        raise PrunefxError(f"COCO data {root} lacks annotations/instances_val*.json (its val split)")
    return found


def _load_json(path: Path) -> dict:
    try:
        content = json.loads(read_regular_file(path, "COCO annotations"))
    except (OSError, ValueError) as error:
        raise PrunefxError(f"cannot read COCO annotations {path}: {first_line(error)}") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(content.get(key), list)]
    if not isinstance(content, dict) or missing:
        raise PrunefxError(f"COCO annotations {path} lack the list{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)}")
    return content


def categories(path: Path) -> tuple[list[int], tuple[str, ...]]:
    """(category ids in id order, their names) of an annotation file."""
    cats = sorted(_load_json(path)["categories"], key=lambda c: c["id"])
    if not cats:
        raise PrunefxError(f"COCO annotations {path} define no categories")
    return [c["id"] for c in cats], tuple(str(c.get("name", c["id"])) for c in cats)


def _image_folder(root: Path, split: str, annotations: Path) -> Path:
    for folder in (root / split, root / "images" / split):
        if folder.is_dir():
            return folder
    raise PrunefxError(f"the images of {annotations} are in neither {root / split} nor {root / 'images' / split}")


def read_split(root: Path, annotations: Path, category_ids: list[int]) -> SplitFiles:
    """One split's images and boxes (class index, x1, y1, x2, y2); a category id outside `category_ids`
    or an image file that is not there is one line naming the annotation file."""
    content = _load_json(annotations)
    split = annotations.stem.removeprefix("instances_")
    folder = _image_folder(root, split, annotations)
    index_of = {cid: i for i, cid in enumerate(category_ids)}
    boxes_of: dict[int, list[list[float]]] = {}
    for annotation in content["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        cid = annotation.get("category_id")
        if cid not in index_of:
            raise PrunefxError(f"{annotations}: annotation {annotation.get('id')} has category_id {cid}, "
                               f"not one of the {len(category_ids)} categories")
        x, y, w, h = (float(v) for v in annotation["bbox"])
        boxes_of.setdefault(annotation["image_id"], []).append([index_of[cid], x, y, x + w, y + h])
    images, boxes = [], []
    for image in sorted(content["images"], key=lambda i: i["id"]):
        name = Path(str(image.get("file_name", "")))
        if name.is_absolute() or ".." in name.parts:  # a data set is what lies inside its folder
            raise PrunefxError(f"{annotations}: image file_name {str(name)!r} leads out of {folder}")
        path = folder / name
        if not path.is_file():
            raise PrunefxError(f"{annotations}: image {image['file_name']} is not in {folder}")
        images.append(inside(path, folder, "image"))
        boxes.append(np.asarray(boxes_of.pop(image["id"], []), dtype=np.float32).reshape(-1, 5))
    if boxes_of:
        raise PrunefxError(f"{annotations}: annotations name image_id {next(iter(boxes_of))}, which its images lack")
    return SplitFiles(images, str(annotations), boxes=boxes)


def coco_splits(root: Path) -> tuple[dict[str, SplitFiles], tuple[str, ...]]:
    """role -> split, and the class names (the train file's categories)."""
    files = annotation_files(root)
    category_ids, names = categories(files["train"])
    return {role: read_split(root, path, category_ids) for role, path in files.items()}, names
