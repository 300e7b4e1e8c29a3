"""Dense-task scores (prunefx/dense_tasks.py) against values worked out by hand with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunefx.dense_tasks import DetectionScore, SegmentationScore, decode_yolo, evaluate_dense
from prunefx.graph.errors import PrunefxError

torch.set_num_threads(1)


def hand_miou(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in target or prediction, padding (-1) left out."""
    keep = target != -1
    predicted, target = predicted[keep], target[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((predicted == c) | (target == c))
        if union:
            ious.append(np.sum((predicted == c) & (target == c)) / union)
    return float(np.mean(ious))


def test_miou_matches_a_hand_computation_with_padding_and_an_absent_class():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (2, 5, 6))  # class 3 of 4 never occurs
    predicted = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape))
    target[1, :2] = -1  # padding pixels
    score = SegmentationScore(4)
    score.update(torch.from_numpy(predicted[:1]), torch.from_numpy(target[:1]))  # accumulated over batches
    score.update(torch.from_numpy(predicted[1:]), torch.from_numpy(target[1:]))
    result = score.compute()
    assert result["miou"] == pytest.approx(hand_miou(predicted, target, 4), abs=1e-6)
    keep = target != -1
    assert result["pixel_accuracy"] == pytest.approx(np.mean(predicted[keep] == target[keep]))
    assert result["per_class_iou"][3] is None and result["count"] == keep.sum()


def test_miou_of_a_two_by_two_example():
    # target [[0, 0], [1, 1]], prediction [[0, 1], [1, 1]]: IoU(0) = 1/2, IoU(1) = 2/3.
    score = SegmentationScore(2)
    logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [5.0, 5.0]]]])  # N x C x H x W
    score.update(logits, torch.tensor([[[0, 0], [1, 1]]]))
    assert score.compute()["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def targets(*rows):
    """One image's detection targets as the N x max_items x 5 layout, padded with -1 rows to 3 items."""
    padded = list(rows) + [[-1] * 5] * (3 - len(rows))
    return torch.tensor([padded])


def test_map_is_one_for_perfect_boxes_and_zero_for_the_wrong_class():
    labels = targets([2, 10, 10, 40, 50], [5, 60, 5, 90, 30])
    boxes = torch.tensor([[10.0, 10, 40, 50], [60, 5, 90, 30]])
    perfect = DetectionScore()
    perfect.update([(boxes, torch.tensor([0.9, 0.8]), torch.tensor([2, 5]))], labels)
    assert perfect.compute()["map"] == pytest.approx(1.0) and perfect.compute()["map_50"] == pytest.approx(1.0)
    wrong = DetectionScore()
    wrong.update([(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 4]))], labels)
    assert wrong.compute()["map"] == pytest.approx(0.0)


def test_map_counts_the_iou_thresholds_a_shifted_box_passes():
    # Ground truth 0..100 x 0..100; the detection shifted right by 20: IoU = 80 * 100 / (120 * 100) = 0.667,
    # a match at the thresholds .50, .55, .60, .65 of the ten from .50 to .95: mAP = 0.4, mAP@.5 = 1.
    score = DetectionScore()
    score.update([(torch.tensor([[20.0, 0, 120, 100]]), torch.tensor([0.9]), torch.tensor([0]))],
                 targets([0, 0, 0, 100, 100]))
    result = score.compute()
    assert result["map"] == pytest.approx(0.4, abs=1e-6) and result["map_50"] == pytest.approx(1.0)


def test_padding_images_are_not_counted():
    score = DetectionScore()
    labels = torch.cat([targets([1, 0, 0, 10, 10]), torch.full((1, 3, 5), -1)])
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    score.update([(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.5]), torch.tensor([1])), empty], labels)
    result = score.compute()
    assert result["count"] == 1 and result["map"] == pytest.approx(1.0)


def test_decode_yolo_converts_centres_and_suppresses_overlaps():
    # Three anchors, two classes: anchors 0 and 1 overlap (IoU 0.82) in class 1, anchor 2 is class 0.
    raw = torch.tensor([[[20.0, 21.0, 70.0], [20.0, 20.0, 70.0], [10.0, 10.0, 20.0], [10.0, 10.0, 40.0],
                         [0.01, 0.02, 0.9], [0.8, 0.6, 0.1]]])
    (boxes, scores, classes), = decode_yolo(raw)
    order = classes.argsort()
    assert classes[order].tolist() == [0, 1]
    assert torch.allclose(boxes[order], torch.tensor([[60.0, 50, 80, 90], [15, 15, 25, 25]]))
    assert torch.allclose(scores[order], torch.tensor([0.9, 0.8]))



def test_decode_yolo_multi_label_keeps_every_class_above_the_threshold():
    # Same head as above: with multi_label, anchor 2 also counts for class 1 (0.1 > 0.05), beside class 0.
    raw = torch.tensor([[[20.0, 21.0, 70.0], [20.0, 20.0, 70.0], [10.0, 10.0, 20.0], [10.0, 10.0, 40.0],
                         [0.01, 0.02, 0.9], [0.8, 0.6, 0.1]]])
    (boxes, scores, classes), = decode_yolo(raw, score_threshold=0.05, multi_label=True)
    found = sorted(zip(classes.tolist(), scores.tolist(), boxes.tolist()), key=lambda row: (row[0], -row[1]))
    assert [(c, round(s, 3)) for c, s, _ in found] == [(0, 0.9), (1, 0.8), (1, 0.1)]
    assert found[0][2] == found[2][2] == [60.0, 50.0, 80.0, 90.0]
    (_, single_scores, _), = decode_yolo(raw, score_threshold=0.05)
    assert sorted(single_scores.tolist(), reverse=True) == pytest.approx([0.9, 0.8])

def test_evaluate_dense_scores_a_model_that_copies_one_hot_masks():
    masks = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    result = evaluate_dense(torch.nn.Identity(), [(one_hot, masks)], task="segmentation", num_classes=3)
    assert result["miou"] == pytest.approx(1.0) and result["metric"] == "mIoU"
    with pytest.raises(PrunefxError, match="dense task"):
        evaluate_dense(torch.nn.Identity(), [], task="keypoints", num_classes=3)
    with pytest.raises(PrunefxError, match="do not match"):
        SegmentationScore(3).update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))


TINY_SEGMENTER = '''
import torch

class Segmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 11, 1))

    def forward(self, x):
        return {"out": self.body(x)}

def build():
    return Segmenter()
'''


@pytest.mark.slow
def test_compress_prunes_distils_and_scores_a_segmenter_on_scenes(tmp_path, capsys):
    """The whole flow on `--data fashion-mnist-seg`: per-pixel KD recovery, mIoU before and after."""
    import json

    import yaml

    from prunefx.cli import main
    from prunefx.data import fashion_mnist

    if not fashion_mnist.DEFAULT_ROOT.is_dir():
        pytest.skip(f"{fashion_mnist.DEFAULT_ROOT} missing: apt-get install dataset-fashion-mnist")
    (tmp_path / "segmenter.py").write_text(TINY_SEGMENTER)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "passes": [
        {"remove_channels": {"macs": 0.6, "round_to": 1, "importance": "obs", "compensate": True}},
        {"distill": {"steps": 5, "lr": 0.01}}]}))
    code = main(["compress", f"{tmp_path / 'segmenter.py'}:build", "--data", "fashion-mnist-seg:24", "--recipe",
                 str(recipe), "-o", str(tmp_path / "out"), "--batch-size", "16", "--eval-batches", "2",
                 "--runs", "3", "--threads", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "segmentation" and "mIoU" in out
    for when in ("before", "after"):
        test = report["accuracy"][when]["test"]
        assert test["metric"] == "mIoU" and 0 <= test["miou"] <= 1 and test["count"] == 2 * 16 * 24 * 24
    assert report["macs_after"] < report["macs_before"]
    assert report["passes"][1]["injected"] == ["data", "eval_data", "task", "teacher"]


def test_reports_name_the_dense_metric_not_accuracy():
    from prunefx.reports.compression import summary_rows
    scored = {"metric": "mIoU", "accuracy": 0.5, "count": 10}
    report = {"accuracy": {"before": {"test": scored, "val": None}, "after": {"test": {**scored, "accuracy": 0.45},
                                                                              "val": None}},
              "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1, "dense_ms": 2.0, "compressed_ms": 1.0, "speedup": 2.0},
              "macs_before": 2e6, "macs_after": 1e6, "params_before": 1e6, "params_after": 5e5}
    assert summary_rows(report)[0] == ("test mIoU", "50.00 %", "45.00 %", "-5.00 pt")


def _coco_scores(tmp_path, annotations: list[dict], found) -> tuple[dict, list[float]]:
    """Two 64 px validation images with `annotations` in a COCO folder, read by format_data and scored with
    `found` (one detection per image): prunefx's result and pycocotools' COCOeval stats (the oracle) on the same
    annotation file and detections."""
    import contextlib
    import io
    import json

    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from prunefx.data.formats import format_data

    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)]
    content = {"images": images, "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / split).mkdir()
        for image in images:
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / split / image["file_name"])
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    splits = format_data(tmp_path, 2, num_workers=0)
    result = evaluate_dense(torch.nn.Identity(), splits.val, task="detection", num_classes=1,
                            decode=lambda output: found)
    truth = COCO(str(tmp_path / "annotations" / "instances_val2017.json"))
    ours = truth.loadRes([{"image_id": i + 1, "category_id": 1, "score": float(scores[0]),
                           "bbox": [*boxes[0, :2].tolist(), *(boxes[0, 2:] - boxes[0, :2]).tolist()]}
                          for i, (boxes, scores, _) in enumerate(found)])
    with contextlib.redirect_stdout(io.StringIO()):
        oracle = COCOeval(truth, ours, "bbox")
        oracle.evaluate(), oracle.accumulate(), oracle.summarize()
    return result, list(oracle.stats)


# a hit on image 1 at score 0.5, a detection on image 2 at 0.9
FOUND = [(torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([0.5]), torch.tensor([0])),
         (torch.tensor([[40.0, 40, 60, 60]]), torch.tensor([0.9]), torch.tensor([0]))]
HIT = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}


def test_an_image_without_objects_read_from_coco_counts_its_detections_as_false_positives(tmp_path):
    """A COCO validation image with no annotation (a background image) is scored, not dropped as padding."""
    result, stats = _coco_scores(tmp_path, [HIT], FOUND)
    assert result["count"] == 2 and stats[0] == pytest.approx(0.5)
    assert result["map"] == pytest.approx(stats[0]) and result["map_50"] == pytest.approx(stats[1])


def test_a_detection_on_a_coco_crowd_region_is_ignored_as_coco_does(tmp_path):
    crowd = {"id": 2, "image_id": 2, "category_id": 1, "bbox": [38, 38, 24, 24], "area": 576, "iscrowd": 1}
    result, stats = _coco_scores(tmp_path, [HIT, crowd], FOUND)
    assert stats[0] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(stats[0]) and result["map_50"] == pytest.approx(stats[1])


def test_a_segmenter_scored_against_its_own_predictions_counts_pixels_not_images():
    """Unlabelled images: a segmenter's score is per-pixel agreement (prunefx/data/unlabelled.py); the log says
    how many pixels, and that it is a pixel accuracy. The oracle: the pixels of the real (not padding) masks."""
    from prunefx import compression
    from prunefx.data.splits import CLASSIFICATION, DataSplits
    from prunefx.graph import capture

    torch.manual_seed(0)
    program = capture(torch.nn.Conv2d(3, 4, 1).eval(), torch.randn(2, 3, 8, 8), name="segmenter").eval()
    images = torch.randn(2, 3, 8, 8)
    masks = program(images).argmax(1)
    masks[1] = -1  # a padding copy
    splits = DataSplits(None, None, None, ("0", "1", "2", "3"), (3, 8, 8), CLASSIFICATION)
    result = compression._score(program, [(images, masks)], splits)
    assert result["metric"] == "pixel accuracy" and result["count"] == 64 and result["accuracy"] == 1.0
    assert compression._percent(result) == "pixel accuracy 100.00 % (64 pixels)"


def test_map_equals_cocoevals_own_on_many_random_boxes():
    """COCOeval (the oracle) on 40 images of jittered and mislabelled boxes: a recall of exactly k/100 reads the
    precision there, as in COCOeval's float64 thresholds (torchmetrics' float32 ones read the next: 0.003 apart
    here)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images, annotations, results, labels, detections = [], [], [], [], []
    for image in range(1, 41):
        images.append({"id": image, "width": 64, "height": 64})
        rows, boxes, scores, classes = [], [], [], []
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.integers(0, 40, 2)
            w, h = rng.integers(10, 24, 2)
            c = int(rng.integers(3))
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": c + 1, "iscrowd": 0,
                                "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h)})
            rows.append([c, x0, y0, x0 + w, y0 + h])
            jitter = rng.normal(0, 2.0, 4)
            boxes.append(np.float32([x0 + jitter[0], y0 + jitter[1], x0 + w + jitter[2], y0 + h + jitter[3]]))
            scores.append(float(np.float32(rng.random())))
            classes.append(c if rng.random() > 0.2 else int(rng.integers(3)))
        results += [{"image_id": image, "category_id": c + 1, "score": s,
                     "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                    for b, s, c in zip(boxes, scores, classes)]
        labels.append(rows)
        detections.append((torch.tensor(np.stack(boxes)), torch.tensor(scores), torch.tensor(classes)))
    target = torch.full((len(labels), max(map(len, labels)), 5), -1.0)
    for index, rows in enumerate(labels):
        target[index, :len(rows)] = torch.tensor(rows, dtype=torch.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": i} for i in (1, 2, 3)]}
        truth.createIndex()
        oracle = COCOeval(truth, truth.loadRes(results), "bbox")
        oracle.evaluate(), oracle.accumulate(), oracle.summarize()
    score = DetectionScore(num_classes=3)
    score.update(detections, target)
    result = score.compute()
    assert (result["map"], result["map_50"]) == pytest.approx((oracle.stats[0], oracle.stats[1]), abs=1e-6)  # float32
