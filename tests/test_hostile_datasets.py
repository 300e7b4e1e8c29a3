"""Hostile data sets: files a data set names (YOLO labels, palette.txt, classes.txt, COCO annotations, the
data yaml, COCO image folders) that link out of the data folder are refused without being read, and their
content never reaches an error line; YAML alias bombs, huge or deeply nested COCO JSON, bad boxes and ids,
mixed-type fields and non-UTF-8 class lists are each one line naming the file; a 100,000-colour palette is
checked in linear time; a mask of the wrong size is found when the data set is opened; an error raised in
a DataLoader worker reaches the caller as its own line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from prunefx.data import dataset_files
from prunefx.data.batches import StaticBatches
from prunefx.data.coco import coco_splits
from prunefx.data.formats import format_data
from prunefx.data.masks import mask_splits
from prunefx.data.palette import read_palette
from prunefx.data.yolo import yolo_splits
from prunefx.graph import PrunefxError

SECRET = "TOKEN-91c2-outside-the-data-folder"


def _png(path, size=(8, 8), value=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)


def _refused(call, *expected: str) -> str:
    """The one-line PrunefxError of `call()`, which never quotes the secret and names each of `expected`."""
    with pytest.raises(PrunefxError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message, message
    assert len(message) < 2000, len(message)
    for part in expected:
        assert part in message, message
    return message


@pytest.fixture
def secret(tmp_path):
    """A file outside the data folder; at teardown, its access time shows it was never read (set before
    its modification time, so that any read moves it even under relatime)."""
    path = tmp_path / "secret.txt"
    path.write_text(f"{SECRET}\n0 0.5 0.5 0.1 0.1\n")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    yield path
    assert os.stat(path).st_atime_ns == 1_000_000_000, "the file outside the data folder was read"


# ---- COCO -------------------------------------------------------------------------------------------

def _coco(root, *, annotations=None, categories=None, images=None):
    """A two-split COCO set of 8 x 8 images; the train file takes the given lists."""
    for split in ("train", "val"):
        _png(root / split / "a.png")
    default = {"images": [{"id": 1, "file_name": "a.png"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
               "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    train = {**default, **{k: v for k, v in (("annotations", annotations), ("categories", categories),
                                                 ("images", images)) if v is not None}}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val.json").write_text(json.dumps(default))
    return root


def test_a_clean_coco_set_reads_its_boxes(tmp_path):
    splits, names = coco_splits(_coco(tmp_path / "coco"))
    assert names == ("one", "two")
    assert splits["train"].boxes[0].tolist() == [[0, 1, 1, 3, 3]]


def test_coco_annotations_linked_out_are_not_read(tmp_path, secret):
    root = _coco(tmp_path / "coco")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"images": SECRET, "annotations": [], "categories": []}))
    (root / "annotations" / "instances_train.json").unlink()
    (root / "annotations" / "instances_train.json").symlink_to(outside)
    _refused(lambda: coco_splits(root), "leads out of the data folder")


def test_a_coco_image_folder_linked_out_is_not_walked(tmp_path):
    root = _coco(tmp_path / "coco")
    outside = tmp_path / "elsewhere"
    _png(outside / "a.png")
    for path in (root / "val").iterdir():
        path.unlink()
    (root / "val").rmdir()
    (root / "val").symlink_to(outside, target_is_directory=True)
    _refused(lambda: coco_splits(root), "COCO image folder", "leads out of the data folder")


@pytest.mark.parametrize("bbox, expected", [
    ([1, 1, float("nan"), 2], "four finite numbers"),
    ([1, 1, -2, 2], "not positive"),
    ([1, 1, 0, 2], "not positive"),
    ([1, 1, 2], "four finite numbers"),
    (["1", "1", "2", "2"], "four finite numbers"),
    (None, "four finite numbers"),
])
def test_bad_coco_boxes_are_one_line_naming_the_entry(tmp_path, bbox, expected):
    root = _coco(tmp_path / "coco", annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}])
    _refused(lambda: coco_splits(root), "instances_train.json: annotations[0]", expected)


@pytest.mark.parametrize("change, expected", [
    ({"categories": [{"id": 1}, {"id": 1}]}, "categories[1] repeats id 1"),
    ({"categories": [{"id": 1}, {"id": "2"}]}, "categories[1]: id must be an integer"),
    ({"categories": [{"id": 1}, {"name": "no id"}]}, "categories[1]: id must be an integer"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}]}, "images[1] repeats id 1"),
    ({"annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 2, 2]}]}, "category_id None"),
    ({"annotations": [{}]}, "annotations[0] has category_id None"),
    ({"annotations": [{"id": 1, "image_id": "1", "category_id": 1, "bbox": [1, 1, 2, 2]}]}, "image_id must be"),
    ({"images": [{"id": 1}]}, "images[0] has no file_name"),
    ({"images": [5]}, "images[0] is not an object"),
])
def test_bad_coco_ids_and_fields_are_one_line(tmp_path, change, expected):
    root = _coco(tmp_path / "coco", **change)
    _refused(lambda: coco_splits(root), expected)


def test_deeply_nested_coco_json_is_one_line(tmp_path):
    root = _coco(tmp_path / "coco")
    (root / "annotations" / "instances_train.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(lambda: coco_splits(root), "nested too deep")


def test_coco_json_of_too_many_objects_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_files, "MAX_JSON_CONTAINERS", 1_000)  # the same rule as at 10 million
    root = _coco(tmp_path / "coco")
    (root / "annotations" / "instances_train.json").write_text(
        '{"images": [], "categories": [], "annotations": [' + ",".join(["{}"] * 2_000) + "]}")
    _refused(lambda: coco_splits(root), "2,004 objects and lists, more than the limit of 1,000")


# ---- YOLO -------------------------------------------------------------------------------------------

def _yolo(root, *, yaml_text=None, label="0 0.5 0.5 0.25 0.25\n"):
    for split in ("train", "val"):
        _png(root / "images" / split / "a.png")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / "a.txt").write_text(label)
    (root / "data.yaml").write_text(yaml_text or "train: images/train\nval: images/val\nnames: [one, two]\n")
    return root


def test_a_clean_yolo_set_reads_its_boxes(tmp_path):
    splits, names = yolo_splits(_yolo(tmp_path / "yolo"))
    assert names == ("one", "two")
    assert splits["train"].boxes[0].tolist() == [[0, 3, 3, 5, 5]]


@pytest.mark.parametrize("given", ["data/yolo/data.yaml", "data/yolo"])
def test_a_yolo_set_named_by_a_relative_path_without_a_path_key_is_read_from_its_folder(tmp_path, monkeypatch, given):
    _yolo(tmp_path / "data" / "yolo")
    monkeypatch.chdir(tmp_path)
    splits, _ = yolo_splits(Path(given))
    assert splits["train"].boxes[0].tolist() == [[0, 3, 3, 5, 5]]


def test_a_yolo_label_file_linked_out_is_not_read(tmp_path, secret):
    root = _yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").unlink()
    (root / "labels" / "train" / "a.txt").symlink_to(secret)
    _refused(lambda: yolo_splits(root), "YOLO labels", "leads out of the data folder")


def test_a_yolo_labels_folder_linked_out_is_not_read(tmp_path, secret):
    root = _yolo(tmp_path / "yolo")
    outside = tmp_path / "outside_labels"
    outside.mkdir()
    (outside / "a.txt").symlink_to(secret)
    for path in (root / "labels" / "val").iterdir():
        path.unlink()
    (root / "labels" / "val").rmdir()
    (root / "labels" / "val").symlink_to(outside, target_is_directory=True)
    _refused(lambda: yolo_splits(root), "leads out of the data folder")


def test_a_data_yaml_linked_out_of_the_named_folder_is_not_read(tmp_path, secret):
    root = _yolo(tmp_path / "yolo")
    (root / "data.yaml").unlink()
    (root / "data.yaml").symlink_to(secret)
    _refused(lambda: yolo_splits(root), "leads out of the data folder")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    root = _yolo(tmp_path / "yolo", yaml_text="\n".join(levels) + "\ntrain: images/train\nval: images/val\n"
                                                                   "names: *a8\n")
    assert (root / "data.yaml").stat().st_size < 1024
    started = time.perf_counter()
    _refused(lambda: yolo_splits(root), "aliases (*name) are not allowed")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("label, expected", [
    ("0 nan 0.5 0.25 0.25\n", "finite numbers"),
    ("0 0.5 0.5 -0.25 0.25\n", "positive width and height"),
    ("0 0.5 0.5 inf 0.25\n", "finite numbers"),
    ("0 0.5\n", "expected 'class x y w h'"),
])
def test_bad_yolo_label_lines_are_one_line_naming_the_file_and_line(tmp_path, label, expected):
    root = _yolo(tmp_path / "yolo", label=label)
    _refused(lambda: yolo_splits(root), "a.txt:1:", expected)


def test_a_label_line_of_10000_columns_gives_a_short_error_line(tmp_path):
    root = _yolo(tmp_path / "yolo", label=" ".join(["0.5"] * 10_000) + "\n")
    message = _refused(lambda: yolo_splits(root), "a.txt:1:")
    assert len(message) < 500


@pytest.mark.parametrize("yaml_text, expected", [
    ("path: 5\ntrain: images/train\nval: images/val\nnames: [a, b]\n", "path: must be a folder"),
    ("train: images/train\nval: images/val\nnames: {0: a, '1': b}\n", "names must be"),
    ("train: images/train\nval: images/val\nnames: [a, [b]]\n", "names must be"),
    ("train: [images/train, [x]]\nval: images/val\nnames: [a, b]\n", "train: must be a folder of images, a .txt"),
    ("train: []\nval: images/val\nnames: [a, b]\n", "train: must be a folder of images, a .txt"),
    ("train: 5\nval: images/val\nnames: [a, b]\n", "train: must be a folder of images, a .txt"),
    ("- just\n- a list\n", "is not a mapping"),
    ("train: !!python/object:os.system x\n", "cannot read YOLO data file"),
])
def test_mistyped_yolo_yaml_fields_are_one_line(tmp_path, yaml_text, expected):
    root = _yolo(tmp_path / "yolo", yaml_text=yaml_text)
    _refused(lambda: yolo_splits(root), expected)


# ---- mask folders -----------------------------------------------------------------------------------

def _masks(root, *, mask_size=(8, 8)):
    for split in ("train", "val"):
        _png(root / "images" / split / "a.png")
        _png(root / "masks" / split / "a.png", mask_size, 1, mode="L")
    (root / "classes.txt").write_text("zero\none\n")
    return root


def test_a_clean_mask_set_reads_its_classes(tmp_path):
    _, names = mask_splits(_masks(tmp_path / "masks"))
    assert names == ("zero", "one")


@pytest.mark.parametrize("name", ["classes.txt", "palette.txt"])
def test_class_lists_and_palettes_linked_out_are_not_read(tmp_path, secret, name):
    root = _masks(tmp_path / "masks")
    (root / name).unlink(missing_ok=True)
    (root / name).symlink_to(secret)
    _refused(lambda: mask_splits(root), "leads out of the data folder")


def test_a_class_list_that_is_not_utf8_is_one_line(tmp_path):
    root = _masks(tmp_path / "masks")
    (root / "classes.txt").write_bytes(b"zero\n\xff\xfe one\n")
    _refused(lambda: mask_splits(root), "classes.txt is not UTF-8 text")


def test_a_mask_of_the_wrong_size_is_found_when_the_set_is_opened(tmp_path):
    root = _masks(tmp_path / "masks", mask_size=(8, 6))
    _refused(lambda: mask_splits(root), "is 8x6 but its image", "is 8x8")


def test_a_100000_colour_palette_is_checked_in_linear_time(tmp_path):
    colours = [(i >> 16, (i >> 8) & 255, i & 255) for i in range(100_000)]
    lines = [f"{r} {g} {b} c{i}" for i, (r, g, b) in enumerate(colours)] + ["0 1 2 again"]
    path = tmp_path / "palette.txt"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    _refused(lambda: read_palette(path, 255), "lists colour (0, 1, 2) twice")
    assert time.perf_counter() - started < 10  # a quadratic check takes minutes


# ---- DataLoader workers -----------------------------------------------------------------------------

class _FailsAtThree(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 3:
            raise PrunefxError("image /data/x.png: cannot read it (remove or replace the file)")
        return torch.zeros(1), torch.tensor(0)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_in_a_worker_reaches_the_caller_as_its_own_line(workers):
    batches = StaticBatches(_FailsAtThree(), 4, shuffle=False, num_workers=workers)
    with pytest.raises(PrunefxError) as caught:
        list(batches)
    assert str(caught.value) == "image /data/x.png: cannot read it (remove or replace the file)"


def test_format_data_reads_a_clean_coco_set_through_workers(tmp_path):
    data = format_data(_coco(tmp_path / "coco"), 1, num_workers=1, augment=False)
    images, boxes = next(iter(data.train))
    assert images.shape == (1, 3, 8, 8) and boxes[0, 0].tolist() == [0, 1, 1, 3, 3]


def test_an_image_turned_bad_after_opening_is_one_line_from_the_worker(tmp_path):
    data = format_data(_coco(tmp_path / "coco"), 1, num_workers=1, augment=False)
    (tmp_path / "coco" / "train" / "a.png").write_bytes(b"not a png")
    with pytest.raises(PrunefxError) as caught:
        next(iter(data.train))
    message = str(caught.value)
    assert message.startswith("cannot read image") and "DataLoader" not in message and "\n" not in message


def test_a_symlinked_dataset_root_inside_itself_still_reads(tmp_path):
    """Links that stay inside the data folder are fine: only those that lead out are refused."""
    root = _yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").rename(root / "shared.txt")
    os.symlink("../../shared.txt", root / "labels" / "train" / "a.txt")
    splits, _ = yolo_splits(root)
    assert splits["train"].boxes[0].tolist() == [[0, 3, 3, 5, 5]]


# ---- linked split folders and boxes outside the image -----------------------------------------------

def _link_out(folder, outside):
    """Replace `folder` by a link to `outside`, which holds the same images."""
    outside.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        path.rename(outside / path.name)
    folder.rmdir()
    folder.symlink_to(outside, target_is_directory=True)


def test_linked_split_folders_leading_out_are_refused_in_every_layout(tmp_path):
    from prunefx.data.splits import image_folder_data
    from prunefx.data.unlabelled import unlabelled_data

    masks = _masks(tmp_path / "masks")
    _link_out(masks / "images" / "val", tmp_path / "out1")
    _refused(lambda: mask_splits(masks), "image folder", "leads out of the data folder")
    yolo = _yolo(tmp_path / "yolo")
    _link_out(yolo / "images" / "train", tmp_path / "out2")
    _refused(lambda: yolo_splits(yolo), "YOLO image folder", "leads out of the data folder")
    folders = tmp_path / "imagefolder"
    for split in ("train", "val"):
        _png(folders / split / "cat" / "a.png")
    _link_out(folders / "val", tmp_path / "out3")
    _refused(lambda: image_folder_data(folders, 1), "leads out of the data folder")
    _refused(lambda: unlabelled_data(folders, 1, image_size=None, channels=3, seed=0, num_workers=0),
             "leads out of the data folder")


def test_a_coco_box_outside_its_declared_image_is_one_line(tmp_path):
    root = _coco(tmp_path / "coco", images=[{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                 annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [6, 1, 40, 2]}])
    _refused(lambda: coco_splits(root), "image 1: box", "outside its image of 8x8 pixels")


def test_a_yolo_coordinate_above_one_is_one_line(tmp_path):
    root = _yolo(tmp_path / "yolo", label="0 12 0.5 0.25 0.25\n")
    _refused(lambda: yolo_splits(root), "a.txt:1:", "fractions of the image's sides")


# ---- through the command line -----------------------------------------------------------------------

def test_the_cli_refuses_a_linked_label_file_in_one_line_without_the_secret(tmp_path, secret, capsys):
    from prunefx.cli import main

    root = _yolo(tmp_path / "yolo")
    (root / "labels" / "val" / "a.txt").unlink()
    (root / "labels" / "val" / "a.txt").symlink_to(secret)
    out = tmp_path / "out"
    status = main(["compress", "prunefx:resnet20", "--recipe", "finetune", "--data", str(root), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and SECRET not in captured.out + captured.err
    assert not out.exists()


def test_the_cli_cuts_an_error_line_to_1000_characters(tmp_path, capsys):
    from prunefx.cli import MAX_ERROR_CHARS, main

    (tmp_path / "train").mkdir()
    name = "x" * 3000  # a path component longer than any error line may be
    status = main(["compress", "prunefx:resnet20", "--recipe", "finetune", "--data", str(tmp_path / name),
                   "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.endswith(" [...]") and len(err) <= len("prunefx compress: error: ") + MAX_ERROR_CHARS + 6, err


# ---- YOLO layouts as Ultralytics reads them ---------------------------------------------------------

BOX = [[0, 3, 3, 5, 5]]  # "0 0.5 0.5 0.25 0.25" on an 8 x 8 image: centre 4, side 2, in pixels


def _yolo_beside(root):
    """Labels beside their images (no images/ folder in the data set), as some exports lay them out."""
    for split in ("train", "val"):
        _png(root / split / "0.png")
        (root / split / "0.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("train: train\nval: val\nnames: [x, y]\n")
    return root


def test_yolo_labels_do_not_change_with_how_the_data_folder_is_spelled(tmp_path, monkeypatch):
    """A folder named images/ above the data set is no part of it: a relative and an absolute path to the
    same set read the same boxes (the absolute one used to send the labels to .../labels/proj/...)."""
    root = _yolo_beside(tmp_path / "images" / "proj" / "ds")
    monkeypatch.chdir(tmp_path / "images" / "proj")
    for given in (Path("ds"), root, Path("ds/data.yaml"), root / "data.yaml"):
        splits, _ = yolo_splits(given)
        assert [b.tolist() for b in splits["train"].boxes] == [BOX], given
        assert [b.tolist() for b in splits["val"].boxes] == [BOX], given


def test_a_yolo_split_without_a_single_label_file_is_one_line(tmp_path):
    root = _yolo(tmp_path / "yolo")
    _png(root / "images" / "train" / "b.png")  # one background image among labelled ones is fine
    splits, _ = yolo_splits(root)
    assert [b.tolist() for b in splits["train"].boxes] == [BOX, []]
    (root / "labels" / "val" / "a.txt").unlink()
    _refused(lambda: yolo_splits(root), "images/val", "none of its 1 images has a label file",
             str(root / "labels" / "val" / "a.txt"))


def test_a_yolo_test_split_without_labels_is_left_out_with_a_warning(tmp_path, caplog):
    """COCO's test-dev has no labels: the data set's train and val splits still serve."""
    root = _yolo(tmp_path / "yolo")
    _png(root / "images" / "test" / "a.png")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\ntest: images/test\nnames: [one, two]\n")
    splits, _ = yolo_splits(root)
    assert sorted(splits) == ["train", "val"]
    assert "the test split is left out" in caplog.text


def test_a_yolo_set_whose_only_other_split_has_no_labels_is_one_line(tmp_path):
    """Its test split left out, nothing was left to score on: the set was taken, and every score read n/a."""
    root = _yolo(tmp_path / "yolo")
    _png(root / "images" / "test" / "a.png")
    (root / "data.yaml").write_text("train: images/train\ntest: images/test\nnames: [one, two]\n")
    _refused(lambda: format_data(root, 1, num_workers=0), "no labelled val or test split")


def test_an_image_folder_set_may_score_on_test_alone(tmp_path):
    """'a train split and a val or test split': train/ and test/ were refused for lacking val/."""
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            _png(tmp_path / "set" / split / label / "a.png")
    splits = format_data(tmp_path / "set", 1, num_workers=0, image_size=16)
    assert splits.val is None and len(splits.test) == 2 and splits.classes == ("cat", "dog")
    (tmp_path / "set" / "test").rename(tmp_path / "set" / "elsewhere")
    _refused(lambda: format_data(tmp_path / "set", 1, num_workers=0), "lacks val/")


def test_a_blank_line_inside_a_class_list_is_one_line_naming_it(tmp_path):
    """Blank lines were skipped: every class below one took the id of the class above it."""
    from prunefx.data.masks import class_names

    (tmp_path / "classes.txt").write_text("background\n\nroad\n\n")
    _refused(lambda: class_names(tmp_path, 2), "classes.txt:2 is blank")
    (tmp_path / "classes.txt").write_text("background\nroad\n\n")  # blank lines after the last: fine
    assert class_names(tmp_path, 1) == ("background", "road")


def _roboflow(root):
    """Roboflow's export: data.yaml beside train/ and valid/, naming them as ../train/images."""
    for split in ("train", "valid"):
        _png(root / split / "images" / "a.png")
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: [x, y]\n")
    return root


def test_a_roboflow_yaml_reads_the_folders_beside_it(tmp_path):
    root = _roboflow(tmp_path / "rf")
    splits, _ = yolo_splits(root / "data.yaml")
    assert splits["train"].images == [root / "train" / "images" / "a.png"]
    assert splits["val"].images == [root / "valid" / "images" / "a.png"]
    assert [b.tolist() for b in splits["train"].boxes] == [BOX]


def test_a_roboflow_folder_read_from_the_data_folder_may_not_link_out_of_it(tmp_path):
    root = _roboflow(tmp_path / "rf")
    _link_out(root / "train" / "images", tmp_path / "elsewhere")
    _refused(lambda: yolo_splits(root), "YOLO image folder", "leads out of the data folder")


def test_a_dotdot_folder_that_exists_is_read_where_it_is(tmp_path):
    """Ultralytics takes the `../` path as written when it exists, and so does prunefx (named explicitly)."""
    root = _roboflow(tmp_path / "rf")
    _png(tmp_path / "train" / "images" / "outer.png")
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "train" / "labels" / "outer.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    splits, _ = yolo_splits(root)
    assert [p.name for p in splits["train"].images] == ["outer.png"]
    assert [b.tolist() for b in splits["train"].boxes] == [[[1, 3, 3, 5, 5]]]


def test_yolo_images_in_sub_folders_of_a_split_are_read_with_their_labels(tmp_path):
    root = _yolo(tmp_path / "yolo")
    _png(root / "images" / "train" / "part2" / "deep" / "b.png")
    (root / "labels" / "train" / "part2" / "deep").mkdir(parents=True)
    (root / "labels" / "train" / "part2" / "deep" / "b.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    splits, _ = yolo_splits(root)
    assert splits["train"].images == [root / "images" / "train" / "a.png",
                                      root / "images" / "train" / "part2" / "deep" / "b.png"]
    assert [b.tolist() for b in splits["train"].boxes] == [BOX, [[1, 3, 3, 5, 5]]]


def test_image_folder_classes_stay_the_top_level_folders(tmp_path):
    from prunefx.data.splits import image_folder_data

    for split in ("train", "val"):
        _png(tmp_path / "ds" / split / "cat" / "a.png")
        _png(tmp_path / "ds" / split / "cat" / "more" / "b.png")  # still a cat, not a class "more"
    data = image_folder_data(tmp_path / "ds", 1)
    assert data.classes == ("cat",)
    assert sorted(Path(p).name for p, _ in data.train.source.samples) == ["a.png", "b.png"]


def test_a_yolo_split_named_by_a_txt_list_reads_the_listed_images(tmp_path):
    root = _yolo(tmp_path / "yolo")
    _png(root / "images" / "train" / "unlisted.png")
    _png(root / "images" / "extra" / "c.png")
    (root / "labels" / "extra").mkdir()
    (root / "labels" / "extra" / "c.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    (root / "train.txt").write_text(f"\ufeff./images/train/a.png\n\n{root / 'images' / 'extra' / 'c.png'}\n")
    (root / "list.yaml").write_text("train: train.txt\nval: images/val\nnames: [one, two]\n")
    splits, _ = yolo_splits(root / "list.yaml")
    assert splits["train"].images == [root / "images" / "extra" / "c.png", root / "images" / "train" / "a.png"]
    assert [b.tolist() for b in splits["train"].boxes] == [[[1, 3, 3, 5, 5]], BOX]
    (root / "many.yaml").write_text("train: [images/train, images/extra]\nval: images/val\nnames: [one, two]\n")
    splits, _ = yolo_splits(root / "many.yaml")
    assert [p.name for p in splits["train"].images] == ["c.png", "a.png", "unlisted.png"]


@pytest.mark.parametrize("line, expected", [
    ("images/train/a.png", "is neither ./NAME"),
    ("./../outside.png", "lies outside the data folder"),
    ("/etc/outside.png", "lies outside the data folder"),
    ("./images/train/missing.png", "does not exist"),
    ("./data.yaml", "is not an image file"),
    ("./link.png", "leads out of the data folder"),
])
def test_bad_lines_of_a_yolo_image_list_are_one_line_naming_the_line(tmp_path, secret, line, expected):
    root = _yolo(tmp_path / "yolo")
    (root / "link.png").symlink_to(secret)
    (root / "train.txt").write_text(f"./images/train/a.png\n{line}\n")
    (root / "data.yaml").write_text("train: train.txt\nval: images/val\nnames: [one, two]\n")
    _refused(lambda: yolo_splits(root), "train.txt:2:", expected)


def test_a_yolo_image_list_outside_the_data_folder_is_refused(tmp_path):
    root = _yolo(tmp_path / "yolo")
    (tmp_path / "train.txt").write_text(f"{root / 'images' / 'train' / 'a.png'}\n")
    (root / "data.yaml").write_text("train: ../train.txt\nval: images/val\nnames: [one, two]\n")
    _refused(lambda: yolo_splits(root), "YOLO image list", "lies outside the data folder")
    (root / "data.yaml").write_text("train: data.yaml\nval: images/val\nnames: [one, two]\n")
    _refused(lambda: yolo_splits(root), "train:", "neither a folder of images nor a .txt list of images")


# ---- links that stay inside the data folder -------------------------------------------------------------

def _move_and_link(path, pool):
    """Move `path` into `pool` (inside the same data folder) and leave a relative link in its place."""
    pool.mkdir(parents=True, exist_ok=True)
    path.rename(pool / path.name)
    path.symlink_to(os.path.relpath(pool / path.name, path.parent))


def test_links_that_leave_a_split_but_stay_in_the_data_folder_are_followed_in_every_layout(tmp_path):
    from prunefx.data.splits import image_folder_data
    from prunefx.data.unlabelled import unlabelled_data

    folders = tmp_path / "imagefolder"
    for split in ("train", "val"):
        _png(folders / split / "cat" / "a.png")
        _png(folders / split / "dog" / "a.png")
    _move_and_link(folders / "train" / "dog", folders / "pool")  # a class folder
    assert image_folder_data(folders, 1).classes == ("cat", "dog")
    assert len(image_folder_data(folders, 1).train.source.samples) == 2
    unlabelled = tmp_path / "unlabelled"
    for split in ("train", "val"):
        _png(unlabelled / split / "a.png")
    _move_and_link(unlabelled / "train" / "a.png", unlabelled / "pool")
    assert len(unlabelled_data(unlabelled, 1, image_size=None, channels=3, seed=0, num_workers=0).train.source) == 1
    yolo = _yolo(tmp_path / "yolo")
    _move_and_link(yolo / "images" / "train" / "a.png", yolo / "pool")
    assert [b.tolist() for b in yolo_splits(yolo)[0]["train"].boxes] == [BOX]
    coco = _coco(tmp_path / "coco")
    _move_and_link(coco / "train" / "a.png", coco / "pool")
    assert [b.tolist() for b in coco_splits(coco)[0]["train"].boxes] == [[[0, 1, 1, 3, 3]]]
    masks = _masks(tmp_path / "masks")
    _move_and_link(masks / "images" / "train" / "a.png", masks / "pool")
    assert len(mask_splits(masks)[0]["train"].images) == 1


def test_links_leaving_the_data_folder_are_still_refused_below_a_split(tmp_path):
    from prunefx.data.splits import image_folder_data

    folders = tmp_path / "imagefolder"
    for split in ("train", "val"):
        _png(folders / split / "cat" / "a.png")
        _png(folders / split / "dog" / "a.png")
    _link_out(folders / "train" / "dog", tmp_path / "out")
    _refused(lambda: image_folder_data(folders, 1), "dog is a link that leads out of")
    yolo = _yolo(tmp_path / "yolo")
    _move_and_link(yolo / "images" / "train" / "a.png", tmp_path / "out_yolo")
    _refused(lambda: yolo_splits(yolo), "a.png is a link that leads out of")


# ---- calibration from unlabelled images ------------------------------------------------------------------

def test_calibrate_reads_a_train_folder_without_class_folders_as_plain_images(tmp_path):
    """`--calibrate u` for the `--data-format images` layout: train/'s images, ImageNet-normalised."""
    from prunefx.data.calibration import calibration_data

    values = [0, 60, 120, 250]
    for value in values:
        _png(tmp_path / "u" / "train" / f"{value:03d}.png", value=value)
    _png(tmp_path / "u" / "val" / "v.png", value=7)
    calibration = calibration_data(str(tmp_path / "u"), torch.zeros(2, 3, 8, 8), 4)
    assert calibration.images == 4 and "4 images from" in calibration.description
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    seen = torch.cat([batch[0] for batch in calibration.batches])
    for image, value in zip(seen, values):  # name order; a flat grey image stays flat through the resize
        expected = ((value / 255 - mean) / std)[:, None, None].expand(3, 8, 8)
        assert torch.allclose(image, expected, atol=1e-5), value
