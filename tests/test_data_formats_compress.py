"""`prunefx compress --data PATH` on Fashion-MNIST scenes written in each layout (masks, YOLO, COCO), a few
training steps each, with the reported metric checked against a computation that shares no code with
prunefx: images and masks read with PIL and normalised by hand, mIoU from a hand-written confusion
matrix, mAP from pycocotools' COCOeval on the written COCO JSON."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from prunefx.cli import main
from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import SceneConfig, make_scenes
from prunefx.data.scene_files import write_scenes
from prunefx.dense_tasks import decode_yolo
from prunefx.graph import Program

torch.set_num_threads(1)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                                                   reason="apt-get install dataset-fashion-mnist")]
SIZE, BATCH, CLASSES = 32, 4, 10
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

MODELS = '''
import torch

class Segmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU(), torch.nn.Conv2d(16, 11, 1))

    def forward(self, x):
        return self.body(x)

class Detector(torch.nn.Module):
    """YOLO export layout: one anchor per pixel, (x, y, w, h) in pixels, then class probabilities."""
    def __init__(self, side=32):
        super().__init__()
        self.side = side
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU(), torch.nn.Conv2d(16, 14, 1))
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys]).flatten(1).float() + 0.5)

    def forward(self, x):
        raw = self.body(x).flatten(2)
        centre = self.grid + torch.tanh(raw[:, :2])
        size = 4 + self.side * 0.4 * torch.sigmoid(raw[:, 2:4])  # about the items' 8 to 14 pixels
        # scores fade out on the black background, so the 100 kept boxes sit on items, of varied classes
        bright = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 5, stride=1, padding=2).flatten(2)
        return torch.cat([centre, size, torch.sigmoid(5 * raw[:, 4:]) * torch.sigmoid(4 * bright)], 1)

class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                        torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)

def classifier():
    torch.manual_seed(0)
    return Classifier()

def segmenter():
    torch.manual_seed(0)
    return Segmenter()

def detector():
    torch.manual_seed(0)
    return Detector()
'''


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    items, classes = fashion_mnist.load_fashion_mnist("test")
    config = SceneConfig(size=SIZE, max_items=4)
    scenes = {split: make_scenes(items, classes, count, split=split, config=config, seed=2)
              for split, count in (("train", 8), ("val", 8))}
    root = tmp_path_factory.mktemp("formats")
    (root / "models.py").write_text(MODELS)
    return root, {fmt: write_scenes(scenes, root / fmt, fmt) for fmt in ("masks", "yolo", "coco")}


def _recipe(root):
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "passes": [
        {"remove_channels": {"macs": 0.7, "round_to": 1}}, {"distill": {"steps": 3, "lr": 0.01}}]}))
    return recipe


def _compress(root, data, factory, out, *options):
    code = main(["compress", f"{root / 'models.py'}:{factory}", "--data", str(data), "--recipe", str(_recipe(root)),
                 "-o", str(out), "--batch-size", str(BATCH), "--runs", "2", "--threads", "1", "--workers", "1",
                 "--no-stage-report", *options])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    return report, Program.load(out / "model_train.pt2")


def _val_images(folder) -> tuple[list[str], torch.Tensor]:
    names = sorted(p.name for p in (folder / "images" / "val").iterdir())
    pixels = [np.asarray(Image.open(folder / "images" / "val" / n).convert("RGB"), np.float64) / 255 for n in names]
    normalised = [(p - MEAN) / STD for p in pixels]
    return names, torch.tensor(np.stack(normalised), dtype=torch.float32).permute(0, 3, 1, 2)


def _outputs(program: Program, images: torch.Tensor) -> torch.Tensor:
    program.eval()
    with torch.no_grad():
        return torch.cat([program.module(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def _hand_ious(predicted: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """IoU per class from a confusion matrix; NaN for a class in neither the target nor the prediction."""
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (target.ravel(), predicted.ravel()), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / union


def test_compress_on_mask_folders_reports_the_hand_computed_miou(written, tmp_path):
    root, folders = written
    report, program = _compress(root, folders["masks"], "segmenter", tmp_path / "out", "--seed", "7")
    assert report["task"] == "segmentation"
    assert report["data_seed"] == 7  # --seed reaches the loaders of a data set on disk
    names, images = _val_images(folders["masks"])
    predicted = _outputs(program, images).argmax(1).numpy()
    masks = np.stack([np.asarray(Image.open(folders["masks"] / "masks" / "val" / n), np.int64) for n in names])
    after = report["accuracy"]["after"]["val"]
    assert after["count"] == masks.size and 0 < after["miou"] < 1
    ious = _hand_ious(predicted, masks, 11)
    assert after["miou"] == pytest.approx(float(np.nanmean(ious)), abs=1e-6)
    assert [None if np.isnan(v) else pytest.approx(v, abs=1e-6) for v in ious] == after["per_class_iou"]
    assert "mIoU per class (val, %)" in (tmp_path / "out" / "report.md").read_text()


def _coco_map(ground_truth, names, detections) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ground_truth))
        ids = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
        results = [{"image_id": ids[name], "category_id": int(c) + 1, "score": float(s),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
                   for name, (boxes, scores, classes) in zip(names, detections)
                   for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())]
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # AP per category: COCO's precision array [iou thresholds, recall points, category, area, max dets]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = [float(np.mean(p[p > -1])) if (p > -1).any() else None for p in np.moveaxis(precision, 2, 0)]
    return float(evaluation.stats[0]), per_class


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_compress_on_detection_files_reports_pycocotools_map(written, fmt, tmp_path):
    root, folders = written
    report, program = _compress(root, folders[fmt], "detector", tmp_path / "out")
    assert report["task"] == "detection"
    names, images = _val_images(folders[fmt])
    detections = decode_yolo(_outputs(program, images))
    # the COCO file written from the same scenes: YOLO's 6-decimal fractions move boxes by < 0.001 pixel
    expected, per_class = _coco_map(folders["coco"] / "annotations" / "instances_val.json", names, detections)
    after = report["accuracy"]["after"]["val"]
    tolerance = 1e-4 if fmt == "coco" else 2e-3
    assert after["count"] == len(names) and after["map"] > 0
    assert after["map"] == pytest.approx(expected, abs=tolerance)
    assert after["per_class_map"] == [None if v is None else pytest.approx(v, abs=tolerance) for v in per_class]


def test_unlabelled_images_distil_and_score_agreement_with_the_dense_model(written, tmp_path):
    """`--data-format images`: no labels; the reported accuracy is agreement with the dense model's top-1."""
    root, folders = written
    images = tmp_path / "unlabelled"
    for split in ("train", "val"):  # the scene canvases, without their masks
        shutil.copytree(folders["masks"] / "images" / split, images / split)
    out = tmp_path / "out"
    code = main(["compress", f"{root / 'models.py'}:classifier", "--data", str(images), "--data-format", "images",
                 "--recipe", str(_recipe(root)), "-o", str(out), "--batch-size", str(BATCH), "--runs", "2",
                 "--threads", "1", "--workers", "0", "--no-stage-report"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert "dense model's own predictions" in report["labels"] and report["classes"] == [str(i) for i in range(10)]
    assert report["accuracy"]["before"]["val"]["accuracy"] == 1.0  # the dense model agrees with itself
    namespace = {}
    exec((root / "models.py").read_text(), namespace)
    dense = namespace["classifier"]().eval()
    _, pixels = _val_images(folders["masks"])
    compressed = _outputs(Program.load(out / "model_train.pt2"), pixels).argmax(1)
    with torch.no_grad():
        agreement = float((dense(pixels).argmax(1) == compressed).float().mean())
    assert report["accuracy"]["after"]["val"]["accuracy"] == pytest.approx(agreement, abs=1e-6)
    assert report["accuracy"]["after"]["val"]["count"] == len(pixels)
