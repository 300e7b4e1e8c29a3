"""COCO detection layout: `ROOT/annotations/instances_<split>.json` with the images in `ROOT/<split>/`
(or `ROOT/images/<split>/`), as COCO 2017 ships (`instances_train2017.json` + `train2017/`).

A split whose name starts with train, val or test plays that role. Classes are the train file's
categories in id order (COCO's ids have gaps: 1..90 for 80 classes), so class index i is the i-th
category. Crowd annotations (`iscrowd: 1`) are kept as crowd regions (class CROWD - c, prunefx/data/batches.py):
COCO's evaluation ignores them and the detections that fall on them. Boxes are COCO's [x, y, width, height]
turned into (x1, y1, x2, y2).

Every file and folder is opened through prunefx/data/dataset_files.py (nothing outside ROOT is read) and
every field is checked: ids are integers and unique, a box is four finite numbers with a positive width
and height, inside the image's declared size (within BOX_TOLERANCE); anything else is one line naming the
file, the entry and the field.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from prunefx.data.batches import CROWD
from prunefx.data.dataset_files import MAX_JSON_BYTES, confined, load_json, quoted, read_data_file, shown
from prunefx.data.samples import SplitFiles, UnlabelledSplit, inside
from prunefx.graph.errors import PrunefxError, printable

_log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
BOX_TOLERANCE = 0.01
WHAT = "COCO annotations"


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
            found[role] = confined(path, root, WHAT)
    if "train" not in found:
        raise PrunefxError(f"COCO data {root} lacks annotations/instances_train*.json (its train split)")
    if "val" not in found and "test" not in found:
        raise PrunefxError(f"COCO data {root} lacks annotations/instances_val*.json (its val split)")
    return found


def _load_json(path: Path, root: Path) -> dict:
    content = load_json(read_data_file(path, root, WHAT, MAX_JSON_BYTES), path, WHAT)
    if not isinstance(content, dict):
        raise PrunefxError(f"{WHAT} {printable(str(path))} is not a JSON object with images, annotations "
                           "and categories")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(content.get(key), list)]
    if missing:
        raise PrunefxError(f"{WHAT} {printable(str(path))} lack the list{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)}")
    for key in ("images", "annotations", "categories"):
        bad = next((i for i, entry in enumerate(content[key]) if not isinstance(entry, dict)), None)
        if bad is not None:
            raise PrunefxError(f"{printable(str(path))}: {key}[{bad}] is not an object")
    return content


def _integer(entry: dict, field: str, where: str) -> int:
    value = entry.get(field)
    if type(value) is not int:  # bool is no id, nor is 1.5 or "1"
        raise PrunefxError(f"{where}: {field} must be an integer, got {shown(value)}")
    return value


def _unique_ids(entries: list[dict], path: Path, key: str) -> list[int]:
    ids, seen = [], set()
    for number, entry in enumerate(entries):
        entry_id = _integer(entry, "id", f"{printable(str(path))}: {key}[{number}]")
        if entry_id in seen:
            raise PrunefxError(f"{printable(str(path))}: {key}[{number}] repeats id {entry_id}")
        seen.add(entry_id)
        ids.append(entry_id)
    return ids


def categories_in(content: dict, path: Path) -> tuple[list[int], tuple[str, ...]]:
    """(category ids in id order, their names) of the annotation file `path` read as `content`."""
    cats = content["categories"]
    ids = _unique_ids(cats, path, "categories")
    if not cats:
        raise PrunefxError(f"{WHAT} {printable(str(path))} define no categories")
    order = sorted(range(len(cats)), key=lambda i: ids[i])
    return [ids[i] for i in order], tuple(printable(str(cats[i].get("name", ids[i]))) for i in order)


def _box(annotation: dict, where: str) -> list[float]:
    """(x1, y1, x2, y2) from COCO's [x, y, width, height]: four finite numbers, width and height positive."""
    bbox = annotation.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(type(v) in (int, float) and math.isfinite(v) for v in bbox)):
        raise PrunefxError(f"{where}: bbox must be four finite numbers [x, y, width, height], got "
                           f"{shown(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise PrunefxError(f"{where}: bbox {shown(bbox)} has a width or height that is not positive")
    return [x, y, x + w, y + h]


def _check_inside(box: list[float], image: dict, where: str) -> None:
    """A box within the image's declared `width` x `height` (when the file gives them), up to
    BOX_TOLERANCE of the side and a pixel (COCO's own boxes overhang by rounding)."""
    for low, high, side in ((box[1], box[3], image.get("width")), (box[2], box[4], image.get("height"))):
        if not isinstance(side, (int, float)) or isinstance(side, bool) or not side > 0:
            continue
        margin = max(1.0, BOX_TOLERANCE * side)
        if low < -margin or high > side + margin:
            raise PrunefxError(f"{where}: box (x1, y1, x2, y2) {shown([round(v, 2) for v in box[1:]])} lies "
                               f"outside its image of {image.get('width')}x{image.get('height')} pixels")


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; False, not an OSError, for a name the file system refuses (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _image_folder(root: Path, split: str, annotations: Path) -> Path:
    for folder in (root / split, root / "images" / split):
        if folder.is_dir():
            return confined(folder, root, "COCO image folder")
    raise PrunefxError(f"the images of {annotations} are in neither {root / split} nor {root / 'images' / split}")


def _boxes_by_image(content: dict, annotations: Path, index_of: dict[int, int]) -> dict[int, list[list[float]]]:
    boxes_of: dict[int, list[list[float]]] = {}
    for number, annotation in enumerate(content["annotations"]):
        where = f"{printable(str(annotations))}: annotations[{number}]"
        cid = annotation.get("category_id")
        if type(cid) is not int or cid not in index_of:
            raise PrunefxError(f"{where} has category_id {shown(cid)}, not one of the {len(index_of)} "
                               "categories")
        image_id = _integer(annotation, "image_id", where)
        label = CROWD - index_of[cid] if annotation.get("iscrowd", 0) else index_of[cid]
        boxes_of.setdefault(image_id, []).append([label, *_box(annotation, where)])
    return boxes_of


def read_split(root: Path, annotations: Path, content: dict, classes: tuple[list[int], tuple[str, ...]]) -> SplitFiles:
    """One split's images and boxes (class index, x1, y1, x2, y2) from its annotation file read as `content`;
    categories other than `classes` (the train file's ids and names), a category id outside them or an image file
    that is not there is one line naming the annotation file."""
    if content["categories"] and categories_in(content, annotations) != classes:
        raise PrunefxError(f"{printable(str(annotations))}: its categories are not the train file's (ids and names): "
                           "the same id would be another class in training and in scoring")
    category_ids = classes[0]
    split = annotations.stem.removeprefix("instances_")
    folder = _image_folder(root, split, annotations)
    boxes_of = _boxes_by_image(content, annotations, {cid: i for i, cid in enumerate(category_ids)})
    image_ids = _unique_ids(content["images"], annotations, "images")
    if image_ids and not content["annotations"]:  # (no images at all: an empty split, refused as one)
        raise UnlabelledSplit(f"{printable(str(annotations))}: its {len(image_ids)} images have no annotations (a "
                              "benchmark's test split, as COCO's test-dev ships): nothing to train or score on")
    images, boxes, declared = [], [], []
    for number in sorted(range(len(image_ids)), key=lambda i: image_ids[i]):
        image = content["images"][number]
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise PrunefxError(f"{printable(str(annotations))}: images[{number}] has no file_name")
        name = Path(image["file_name"])
        if name.is_absolute() or ".." in name.parts:  # a data set is what lies inside its folder
            raise PrunefxError(f"{printable(str(annotations))}: image file_name {quoted(str(name))} leads out "
                               f"of {printable(str(folder))}")
        path = folder / name
        if not _is_file(path):
            raise PrunefxError(f"{printable(str(annotations))}: image {printable(str(name))[:200]} is not in "
                               f"{printable(str(folder))}")
        images.append(inside(path, root, "image"))  # a link may lead anywhere inside the data folder
        rows = boxes_of.pop(image_ids[number], [])
        for row in rows:
            _check_inside(row, image, f"{printable(str(annotations))}: image {image_ids[number]}")
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
        sides = image.get("height"), image.get("width")
        declared.append(sides if all(type(side) is int for side in sides) else None)
    if boxes_of:
        raise PrunefxError(f"{printable(str(annotations))}: annotations name image_id {next(iter(boxes_of))}, "
                           "which its images lack")
    return SplitFiles(images, str(annotations), boxes=boxes, declared_sizes=declared)


def coco_splits(root: Path) -> tuple[dict[str, SplitFiles], tuple[str, ...]]:
    """role -> split, and the class names (the train file's categories)."""
    files = annotation_files(root)
    train = _load_json(files["train"], root)  # read once: COCO 2017's is 450 MB
    classes = categories_in(train, files["train"])
    splits = {}
    for role, path in files.items():
        try:
            splits[role] = read_split(root, path, train if role == "train" else _load_json(path, root), classes)
        except UnlabelledSplit as error:
            if role != "test":
                raise
            _log.warning(f"the test split is left out: {error}")  # the rest of the data still serves
    return splits, classes[1]
