"""Users' data layouts (prunefx/data/formats.py): Fashion-MNIST scenes written as masks, YOLO and COCO
read back equal to the scenes in memory (the oracle: the generator's tensors and ImageNet's published
normalisation constants), and every bad-data case a one-line error, exit 2, with nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from prunefx.cli import main
from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import SceneConfig, make_scenes
from prunefx.data.formats import detect_format
from prunefx.data.load import load_data
from prunefx.data.normalise import NormalizeBatch
from prunefx.data.scene_files import write_scenes
from prunefx.graph.errors import PrunefxError

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                reason=f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
SIZE, BATCH = 32, 4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def scenes():
    items, classes = fashion_mnist.load_fashion_mnist("test")
    config = SceneConfig(size=SIZE, max_items=4)
    return {split: make_scenes(items, classes, 6, split=split, config=config, seed=4) for split in ("train", "val")}


@pytest.fixture(scope="module")
def written(scenes, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return {fmt: write_scenes(scenes, root / fmt, fmt) for fmt in ("masks", "yolo", "coco")}


def _copy(written, fmt, tmp_path):
    return shutil.copytree(written[fmt], tmp_path / fmt)


def _all(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def _normalised(gray: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (gray.float().repeat(1, 3, 1, 1) / 255 - mean) / std


def test_masks_read_back_as_the_scenes(written, scenes):
    assert detect_format(written["masks"]) == "masks"
    splits = load_data(written["masks"], BATCH, num_workers=0)
    assert splits.task == "segmentation" and splits.num_classes == 11 and splits.input_shape == (3, SIZE, SIZE)
    images, masks = _all(splits.val)  # in order, 6 images padded to 8 with label -1
    torch.testing.assert_close(images[:6], _normalised(scenes["val"].images), atol=1e-5, rtol=0)
    assert torch.equal(masks[:6], scenes["val"].masks) and (masks[6:] == -1).all()


def test_files_read_back_bit_for_bit_as_the_in_memory_batches(written, scenes):
    # one normalisation for both routes: 1-bit input differences grew to 1.8 mIoU points in two epochs
    images, _ = _all(load_data(written["masks"], BATCH, num_workers=0).val)
    in_memory = NormalizeBatch(IMAGENET_MEAN, IMAGENET_STD, channels=3)(scenes["val"].images)
    assert torch.equal(images[:6], in_memory)


@pytest.mark.parametrize("fmt, tolerance", [("coco", 0.0), ("yolo", 1e-3)])
def test_boxes_read_back_as_the_scenes(written, scenes, fmt, tolerance):
    assert detect_format(written[fmt]) == fmt
    splits = load_data(written[fmt], BATCH, num_workers=0)
    assert splits.task == "detection" and splits.classes == fashion_mnist.CLASSES
    images, boxes = _all(splits.val)
    expected = scenes["val"].boxes.float()
    most = max(int((b[:, 0] >= 0).sum()) for s in scenes.values() for b in s.boxes)
    assert boxes.shape == (8, most, 5)
    torch.testing.assert_close(boxes[:6], expected[:, :most], atol=tolerance, rtol=0)
    torch.testing.assert_close(images[:6], _normalised(scenes["val"].images), atol=1e-5, rtol=0)


def test_a_smaller_image_size_scales_boxes_and_masks(written, scenes):
    half = SIZE // 2
    boxes = _all(load_data(written["coco"], BATCH, num_workers=0, image_size=half).val)[1][:6]
    present = boxes[..., 0] >= 0
    expected = scenes["val"].boxes[:, :boxes.shape[1]].float()
    torch.testing.assert_close(boxes[present][:, 1:], expected[present][:, 1:] / 2)
    masks = _all(load_data(written["masks"], BATCH, num_workers=0, image_size=half).val)[1][:6]
    assert masks.shape == (6, half, half)
    # nearest neighbour at each output pixel's centre: source pixel 2i + 1 of an exact 2x reduction
    assert torch.equal(masks, scenes["val"].masks[:, 1::2, 1::2])


def test_two_workers_give_the_same_batches_as_none(written):
    order = [load_data(written["coco"], BATCH, num_workers=workers, seed=3).train for workers in (0, 2)]
    for loader in order:
        loader.set_epoch(1)
    for (a, la), (b, lb) in zip(*order, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


# ---- colour masks with a palette file -------------------------------------------------------------------

def _colour(class_id: int) -> tuple[int, int, int]:
    return (20 * class_id % 256, (255 - 20 * class_id) % 256, 7 * class_id % 256)


def _to_colour_masks(root, *, palette_name: str = "palette.txt") -> None:
    """Rewrite the class-id masks under `root` as RGB colour masks, and write their palette (and an ignore colour)."""
    names = (root / "classes.txt").read_text().splitlines()
    (root / "classes.txt").unlink()  # the palette names the classes
    lines = [f"{r} {g} {b} {name}" for (r, g, b), name in ((_colour(i), n) for i, n in enumerate(names))]
    (root / palette_name).write_text("# r g b name\n" + "\n".join([*lines, "255 255 255 ignore"]) + "\n")
    for mask in (root / "masks").rglob("*.png"):
        ids = np.asarray(Image.open(mask))
        Image.fromarray(np.array([_colour(i) for i in range(256)], np.uint8)[ids]).save(mask)


def test_colour_masks_read_back_as_the_scenes_through_their_palette(written, scenes, tmp_path):
    root = _copy(written, "masks", tmp_path)
    _to_colour_masks(root)
    spoiled = root / "masks" / "val" / "00000.png"
    pixels = np.asarray(Image.open(spoiled)).copy()
    pixels[0, 0] = 255  # the palette's ignore colour
    Image.fromarray(pixels).save(spoiled)
    splits = load_data(root, BATCH, num_workers=0)
    assert splits.num_classes == 11 and splits.classes[0] == "background"
    _, masks = _all(splits.val)
    expected = scenes["val"].masks.clone()
    expected[0, 0, 0] = -1
    assert torch.equal(masks[:6], expected)
    # a palette named explicitly, elsewhere
    (root / "palette.txt").rename(tmp_path / "colours.txt")
    _, again = _all(load_data(root, BATCH, num_workers=0, palette=tmp_path / "colours.txt").val)
    assert torch.equal(again, masks)


def _unknown_colour(root):
    _to_colour_masks(root)
    mask = root / "masks" / "val" / "00002.png"
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[3, 5] = (1, 2, 3)
    Image.fromarray(pixels).save(mask)
    return "00002.png has colour (1, 2, 3) at x=5, y=3"


def _colour_without_palette(root):
    _to_colour_masks(root)
    (root / "palette.txt").unlink()
    return "is RGB, not class ids"


def _bad_palette_line(root):
    _to_colour_masks(root)
    (root / "palette.txt").write_text("0 0 0 background\n300 0 0 shirt\n")
    return "palette.txt:2: expected 'red green blue name'"


# ---- bad data: one line naming the file, exit 2, nothing written ---------------------------------------

def _edit_json(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _named(message, *_done):
    """What the error must name, after the spoiling calls in `_done` ran."""
    return message


def _garbage_image(root):
    (root / "images" / "val" / "00001.png").write_bytes(b"not an image at all")
    return "00001.png"


def _empty_val(root):
    for image in (root / "images" / "val").iterdir():
        image.unlink()
    return "images/val"


def _linked_out(root, kind):
    """Replace a file of the data set by a link to a copy outside its folder."""
    inside = root / kind / "val" / "00000.png"
    outside = root.parent / "outside.png"
    shutil.copy(inside, outside)
    inside.unlink()
    inside.symlink_to(outside)
    return "00000.png leads out of"


def _fifo_image(root):
    """An image replaced by a FIFO: opening it for its header would wait for a writer forever."""
    image = root / "images" / "val" / "00001.png"
    image.unlink()
    os.mkfifo(image)
    return "image 00001.png is not in"


BAD_CASES = {
    "coco image that is a FIFO": ("coco", _fifo_image),
    "coco image linked out of its folder": ("coco", lambda r: _linked_out(r, "images")),
    "masks mask linked out of its folder": ("masks", lambda r: _linked_out(r, "masks")),
    "coco missing annotation file": ("coco", lambda r: (r / "annotations" / "instances_val.json").unlink()
                                     or "instances_val"),
    "coco category outside classes": ("coco", lambda r: _edit_json(
        r / "annotations" / "instances_train.json",
        lambda c: c["annotations"][0].update(category_id=99)) or "category_id 99"),
    "coco undecodable image": ("coco", _garbage_image),
    "coco empty split": ("coco", lambda r: _edit_json(r / "annotations" / "instances_val.json",
                                                      lambda c: c.update(images=[], annotations=[]))
                         or "instances_val.json holds no images"),
    "yolo class outside classes": ("yolo", lambda r: _named("00002.txt:1: class 12", (
        r / "labels" / "train" / "00002.txt").write_text("12 0.5 0.5 0.1 0.1\n"))),
    "yolo undecodable image": ("yolo", _garbage_image),
    "yolo empty split": ("yolo", _empty_val),
    "masks id outside classes": ("masks", lambda r: Image.fromarray(np.full((SIZE, SIZE), 50, np.uint8)).save(
        r / "masks" / "val" / "00003.png") or "00003.png holds class id 50"),
    "masks missing mask file": ("masks", lambda r: (r / "masks" / "train" / "00000.png").unlink() or "has no mask"),
    "masks undecodable image": ("masks", _garbage_image),
    "masks empty split": ("masks", _empty_val),
    "masks colour outside the palette": ("masks", _unknown_colour),
    "masks colour without a palette": ("masks", _colour_without_palette),
    "masks bad palette line": ("masks", _bad_palette_line),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_is_one_line_exit_2_and_nothing_written(case, written, tmp_path, capsys):
    fmt, spoil = BAD_CASES[case]
    root = _copy(written, fmt, tmp_path)
    named = spoil(root)
    out = tmp_path / "out"
    code = main(["compress", "torchvision:resnet18", "--data", str(root), "--recipe", "finetune", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not out.exists()
    with pytest.raises(PrunefxError, match=re.escape(named)):
        load_data(root, BATCH, num_workers=0)


@pytest.mark.parametrize("fmt", ["masks", "yolo", "coco"])
def test_calibration_reads_the_training_images_at_the_models_input_size(written, scenes, fmt):
    from prunefx.data.calibration import calibration_data

    calibration = calibration_data(str(written[fmt]), torch.zeros(2, 1, SIZE, SIZE), images=4)
    assert [tuple(batch[0].shape) for batch in calibration.batches] == [(2, 1, SIZE, SIZE)] * 2
    assert calibration.description == f"4 images from {written[fmt]} ({fmt} training images, shuffled)"
    gray_mean, gray_std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
    canvases = torch.stack([((image[0].float() / 255 - gray_mean) / gray_std).flatten()
                            for image in scenes["train"].images])
    for batch in calibration.batches:  # every calibration image is one of the training canvases
        for image in batch[0]:  # up to float rounding: the reader scales by 1/255 as the in-memory batches do
            assert (canvases - image[0].flatten()).abs().amax(dim=1).min() < 1e-5


def test_unlabelled_images_without_a_val_folder_are_one_line_exit_2(written, tmp_path, capsys):
    images = tmp_path / "unlabelled"
    shutil.copytree(written["masks"] / "images" / "train", images / "train")
    out = tmp_path / "out"
    code = main(["compress", "torchvision:resnet18", "--data", str(images), "--data-format", "images",
                 "--recipe", "finetune", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "need train/ and val/" in err, err
    assert not out.exists()


def test_a_palette_comment_may_follow_an_entry(tmp_path):
    """'255 255 255 ignore  # object borders' named a class 'ignore  # object borders': its pixels were trained on
    as a third class instead of ignored."""
    from prunefx.data.palette import read_palette

    palette_file = tmp_path / "palette.txt"
    palette_file.write_text("# colour masks\n0 0 0 background\n128 64 128 road  # asphalt\n"
                            "255 255 255 ignore  # object borders\n")
    palette = read_palette(palette_file, ignore_id=-1)
    assert palette.names == ("background", "road")
    pixels = np.array([[[0, 0, 0], [128, 64, 128], [255, 255, 255]]], dtype=np.uint8)
    assert palette.ids(pixels, palette_file).tolist() == [[0, 1, -1]]
