"""Data read as its author meant it: a camera's EXIF turn applied (boxes and labels are drawn on the picture as
shown), 16-bit gray scaled rather than clipped, COCO boxes kept to the image size their file states, an unlabelled
COCO test split left out, 0/255 binary masks refused rather than read as nothing but background, a key repeated in a
recipe or data yaml refused, an ImageFolder image that does not decode found when the data set is opened, every image
type in a flat calibration folder, and data options a named data set would not read refused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from prunefx.cli import main
from prunefx.compress_inputs import load_model_and_data
from prunefx.data.calibration import image_batches
from prunefx.data.coco import coco_splits
from prunefx.data.formats import format_data
from prunefx.data.image_files import read_image
from prunefx.data.load import load_data
from prunefx.data.masks import mask_splits
from prunefx.data.yolo import yolo_splits
from prunefx.graph import PrunefxError
from prunefx.passes.core.recipe import RecipeError, read_recipe

EXIF_ORIENTATION = 0x0112
ROTATED_CLOCKWISE = 6  # EXIF: turn the stored image 90 degrees clockwise to show it


def _shown_and_stored(path, *, height=80, width=40):
    """A picture shown `height` x `width` with a white square at its top left, stored as a phone stores a portrait
    photo: turned a quarter counter-clockwise, with the EXIF orientation that turns it back."""
    shown = np.zeros((height, width, 3), np.uint8)
    shown[:16, :16] = 255
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_CLOCKWISE
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=100, exif=exif)
    return shown


def test_a_phone_photo_is_read_as_shown_and_its_yolo_box_covers_the_object(tmp_path):
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        shown = _shown_and_stored(root / "images" / split / "a.jpg")
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "a.txt").write_text("0 0.2 0.1 0.4 0.2\n")  # the square, in shown fractions
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [square]\n")
    pixels = read_image(root / "images" / "val" / "a.jpg").permute(1, 2, 0).numpy()
    assert pixels.shape == shown.shape and np.abs(pixels.astype(int) - shown).max() < 40
    splits, _ = yolo_splits(root)
    [[label, x1, y1, x2, y2]] = splits["val"].boxes[0].tolist()
    assert (label, x1, y1, x2, y2) == pytest.approx((0, 0, 0, 16, 16))


def test_sixteen_bit_gray_is_scaled_to_eight_bits_not_clipped(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.array([[1000, 32768, 65535]], np.uint16)).save(path)
    assert read_image(path)[0, 0].tolist() == [1000 >> 8, 32768 >> 8, 65535 >> 8]


def _coco(root, *, train_size=(8, 8), test_annotations=None):
    """A COCO set of 8 x 8 PNGs whose train file states `train_size` (height, width), and a test split."""
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "a.png")
    (root / "annotations").mkdir()
    for split in ("train", "val", "test"):
        height, width = train_size if split == "train" else (8, 8)
        content = {"images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
                   "categories": [{"id": 1, "name": "one"}]}
        if split == "test" and test_annotations is not None:
            content["annotations"] = test_annotations
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return root


def test_coco_boxes_in_pixels_of_another_image_size_are_refused(tmp_path):
    format_data(_coco(tmp_path / "same"), 1, num_workers=0)  # the stated size: read
    with pytest.raises(PrunefxError, match="is 8x8 pixels but its annotations say 16x12"):
        format_data(_coco(tmp_path / "other", train_size=(12, 16)), 1, num_workers=0)


def test_a_coco_test_split_without_annotations_is_left_out_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        splits, _ = coco_splits(_coco(tmp_path / "coco", test_annotations=[]))
    assert sorted(splits) == ["train", "val"] and "the test split is left out" in caplog.text
    (tmp_path / "coco" / "annotations" / "instances_test.json").unlink()
    train = tmp_path / "coco" / "annotations" / "instances_train.json"
    train.write_text(json.dumps({**json.loads(train.read_text()), "annotations": []}))
    with pytest.raises(PrunefxError, match="have no annotations"):
        coco_splits(tmp_path / "coco")


def test_binary_masks_stored_as_0_and_255_are_refused_not_read_as_background(tmp_path):
    root = tmp_path / "masks"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "images" / split / "a.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[2:6, 2:6] = 255
        Image.fromarray(mask, "L").save(root / "masks" / split / "a.png")
    with pytest.raises(PrunefxError, match="hold no class but 0"):
        mask_splits(root)
    for split in ("train", "val"):  # the same objects written as class 1 read as two classes
        mask = np.asarray(Image.open(root / "masks" / split / "a.png")) // 255
        Image.fromarray(mask.astype(np.uint8), "L").save(root / "masks" / split / "a.png")
    assert mask_splits(root)[1] == ("0", "1")


def test_a_key_repeated_in_a_recipe_or_a_data_yaml_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: twice\npasses:\n  - remove_channels: {macs: 0.5}\npasses:\n  - distill: {steps: 2}\n")
    with pytest.raises(RecipeError, match="key 'passes' appears twice .* line 4"):
        read_recipe(recipe)
    recipe.write_text("name: once\npasses:\n  - remove_channels: {macs: 0.5}\n  - distill: {steps: 2}\n")
    assert [list(step) for step in read_recipe(recipe)["passes"]] == [["remove_channels"], ["distill"]]
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [a]\nnames: [b]\n")
    with pytest.raises(PrunefxError, match="key 'names' appears twice"):
        yolo_splits(root)


def test_an_image_folder_image_that_does_not_decode_is_found_when_the_data_opens(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.png")
    (tmp_path / "val" / "b" / "broken.png").write_text("not an image")
    with pytest.raises(PrunefxError, match="broken.png"):
        load_data(tmp_path, 2, num_workers=0)  # before any batch is drawn


def test_a_flat_calibration_folder_reads_every_image_type(tmp_path):
    for index, suffix in enumerate((".png", ".jpg", ".webp", ".bmp", ".tif")):
        Image.new("RGB", (8, 8), (index * 40,) * 3).save(tmp_path / f"{index}{suffix}")
    assert len(image_batches(tmp_path, torch.zeros(1, 3, 8, 8))) == 5


def test_data_options_a_named_data_set_does_not_read_are_refused(tmp_path):
    with pytest.raises(PrunefxError, match="--palette applies to a data set on disk, not fashion-mnist"):
        load_model_and_data("torchvision:resnet18", "fashion-mnist", batch_size=2, files={"palette": "x.txt"})


def test_unlabelled_images_are_not_trained_without_distillation(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (16, 16), (index * 60,) * 3).save(tmp_path / "images" / split / f"{index}.png")
    factory = tmp_path / "net.py"
    factory.write_text("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                       "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n")
    code = main(["compress", f"{factory}:net", "--data", str(tmp_path / "images"), "--data-format", "images",
                 "--recipe", "finetune", "--batch-size", "2", "--image-size", "16", "--workers", "0",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "trains with kd_weight 0" in err and "is unlabelled" in err, err
    assert not (tmp_path / "out").exists()


def test_coco_val_categories_other_than_train_are_refused(tmp_path):
    root = _coco(tmp_path / "coco")
    val = root / "annotations" / "instances_val.json"
    val.write_text(json.dumps({**json.loads(val.read_text()), "categories": [{"id": 1, "name": "another"}]}))
    with pytest.raises(PrunefxError, match="instances_val.json: its categories are not the train file's"):
        coco_splits(root)


def test_validation_images_that_are_training_images_are_said(tmp_path, caplog):
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(root / "images" / "train" / f"{name}.png")
        (root / "labels" / "train" / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [a]\n")
    with caplog.at_level(logging.WARNING):
        format_data(root, 1, num_workers=0)
    assert "2 of the 2 val images are training images too" in caplog.text
