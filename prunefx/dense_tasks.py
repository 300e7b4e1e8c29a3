"""Scores of dense tasks, computed by torchmetrics (not re-implemented here):

- segmentation: mean intersection over union (mIoU) over the classes that occur in the labels or the
  predictions (torchmetrics' MulticlassJaccardIndex, macro average; a class absent from both has no
  IoU and is left out, as in the usual benchmark code), per-class IoU and pixel accuracy;
- detection: COCO-style mAP@[.5:.95] and mAP@.5 (torchmetrics' MeanAveragePrecision on the pycocotools
  backend, the reference COCO evaluation).

Labels follow prunefx/data/splits.py: segmentation masks N x H x W with -1 for padding; detection targets
N x max_items x 5 (class, x1, y1, x2, y2 with exclusive x2, y2) with rows of -1 where there is no item;
a padding copy is -1 everywhere and is not counted, an image without any item (class NO_ITEMS in its
first row) is, as in COCO's evaluation. A detector's raw output is turned into boxes
by a `decode` function, `decode_yolo` for YOLOv8-style heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from prunefx.data.batches import CROWD
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.eval_mode import evaluating
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.placement import module_device
from prunefx.passes.training.data import split_batch
from prunefx.passes.training.losses import IGNORE_LABEL, logits_of

Detections = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per image: boxes k x 4, scores k, classes k


def _torchmetrics():
    try:
        import torchmetrics
    except ImportError:
        raise PrunefxError("dense-task metrics need torchmetrics: pip install 'torchmetrics>=1.4' pycocotools") \
            from None
    return torchmetrics


class SegmentationScore:
    """Accumulates per-pixel predictions against masks; `compute()` gives mIoU, per-class IoU and pixel
    accuracy. Pixels labelled -1 (padding) are left out."""

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise PrunefxError(f"segmentation needs at least 2 classes, got {num_classes}")
        classification = _torchmetrics().classification
        self.num_classes = num_classes
        self._mean = classification.MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_LABEL)
        self._per_class = classification.MulticlassJaccardIndex(num_classes, average="none",
                                                                ignore_index=IGNORE_LABEL)
        self._correct = self._pixels = 0

    def update(self, logits_or_classes: torch.Tensor, masks: torch.Tensor) -> None:
        """`logits_or_classes`: N x C x H x W scores or N x H x W class indices; `masks`: N x H x W."""
        predicted = logits_or_classes.argmax(1) if logits_or_classes.dim() == masks.dim() + 1 else logits_or_classes
        if predicted.shape != masks.shape:
            raise PrunefxError(f"segmentation predictions {tuple(predicted.shape)} do not match the masks "
                               f"{tuple(masks.shape)}")
        predicted, masks = predicted.detach().cpu().long(), masks.cpu().long()
        self._mean.update(predicted, masks)
        self._per_class.update(predicted, masks)
        counted = masks != IGNORE_LABEL
        self._correct += int(((predicted == masks) & counted).sum())
        self._pixels += int(counted.sum())

    def compute(self) -> dict:
        if self._pixels == 0:
            return {"metric": "mIoU", "accuracy": float("nan"), "miou": float("nan"), "pixel_accuracy": float("nan"),
                    "per_class_iou": [], "count": 0}
        miou = float(self._mean.compute())
        # A class that occurs in neither labels nor predictions has no IoU: reported as None, not 0.
        occurs = self._per_class.confmat.sum(0) + self._per_class.confmat.sum(1) > 0
        per_class = [float(v) if o else None for v, o in zip(self._per_class.compute().tolist(), occurs.tolist())]
        # "accuracy" is the headline score of the task, so reports written for classification show mIoU.
        return {"metric": "mIoU", "accuracy": miou, "miou": miou, "pixel_accuracy": self._correct / self._pixels,
                "per_class_iou": per_class, "count": self._pixels}


def targets_of(labels: torch.Tensor) -> list[dict[str, torch.Tensor] | None]:
    """Detection targets N x max_items x 5 as torchmetrics' target dicts (None for padding images; no boxes for an
    image without objects, NO_ITEMS: its detections are false positives, as COCO's evaluation counts them)."""
    if labels.dim() != 3 or labels.shape[-1] != 5:
        raise PrunefxError(f"detection targets must be N x max_items x 5 (class, x1, y1, x2, y2), got "
                           f"{tuple(labels.shape)}")
    targets = []
    for rows in labels:
        classes = rows[:, 0].long()
        crowd = classes <= CROWD
        present = (classes >= 0) | crowd
        real = bool((classes != IGNORE_LABEL).any())  # a padding copy is -1 everywhere
        targets.append({"boxes": rows[present, 1:].float().reshape(-1, 4),
                        "labels": torch.where(crowd, CROWD - classes, classes)[present],
                        "iscrowd": crowd[present].long()} if real else None)
    return targets


class DetectionScore:
    """Accumulates detections against targets; `compute()` gives COCO mAP@[.5:.95] and mAP@.5."""

    def __init__(self, max_detections: int = 100, num_classes: int | None = None):
        detection = _torchmetrics().detection
        self.num_classes = num_classes
        try:
            # COCOeval's own 101 recall thresholds, in float64: torchmetrics makes them in float32, where a recall of
            # exactly k/100 falls below its threshold and reads the next precision
            self._metric = detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                                          max_detection_thresholds=[1, 10, max_detections],
                                                          rec_thresholds=np.linspace(0, 1, 101).tolist(),
                                                          class_metrics=True)
        except ModuleNotFoundError as error:
            raise PrunefxError(f"COCO mAP needs pycocotools: pip install pycocotools ({error})") from None
        self._images = 0

    def update(self, detections: Detections, labels: torch.Tensor) -> None:
        targets = targets_of(labels.cpu())
        if len(detections) != len(targets):
            raise PrunefxError(f"{len(detections)} images of detections for {len(targets)} images of targets")
        preds, kept = [], []
        for (boxes, scores, classes), target in zip(detections, targets):
            if target is None:  # padding
                continue
            preds.append({"boxes": boxes.detach().cpu().float(), "scores": scores.detach().cpu().float(),
                          "labels": classes.detach().cpu().long()})
            kept.append(target)
        if kept:
            self._metric.update(preds, kept)
            self._images += len(kept)

    def compute(self) -> dict:
        if self._images == 0:
            return {"metric": "mAP@[.5:.95]", "accuracy": float("nan"), "map": float("nan"),
                    "map_50": float("nan"), "count": 0}
        result = self._metric.compute()
        value = float(result["map"])
        return {"metric": "mAP@[.5:.95]", "accuracy": value, "map": value, "map_50": float(result["map_50"]),
                "map_75": float(result["map_75"]), "per_class_map": self._per_class(result), "count": self._images}

    def _per_class(self, result: dict) -> list[float | None]:
        """mAP@[.5:.95] by class index; None for a class with no target (COCO's -1: no AP to speak of)."""
        classes = result["classes"].reshape(-1).tolist()
        values = result["map_per_class"].reshape(-1).tolist()
        count = self.num_classes if self.num_classes is not None else max(classes, default=-1) + 1
        per_class: list[float | None] = [None] * count
        for index, value in zip(classes, values):
            if 0 <= index < count and value >= 0:
                per_class[index] = value
        return per_class


def decode_yolo(output, *, score_threshold: float = 0.001, iou_threshold: float = 0.7,
                max_detections: int = 100, multi_label: bool = False) -> Detections:
    """Boxes of a YOLOv8-style head in eval mode: N x (4 + classes) x anchors, the 4 being box centre and
    size (x, y, w, h) in input pixels and the rest class probabilities. Per image: the best class per
    anchor above `score_threshold`, then class-wise non-maximum suppression, at most `max_detections`.

    `multi_label=True` keeps every (anchor, class) pair above the threshold instead, as Ultralytics'
    validator does (with `max_detections=300`): a box the model hesitates over between two classes
    then counts for both, which raises mAP; it is there to compare with Ultralytics' own figures."""
    raw = logits_of(output)
    if raw.dim() != 3 or raw.shape[1] < 5:
        raise PrunefxError(f"a YOLO head gives N x (4 + classes) x anchors, got {tuple(raw.shape)}")
    from torchvision.ops import batched_nms  # on use: torchvision's import costs every prunefx start 2 s

    detections = []
    for prediction in raw.detach().float().transpose(1, 2):
        centre, size, probabilities = prediction[:, :2], prediction[:, 2:4], prediction[:, 4:]
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
        if multi_label:
            anchors, classes = (probabilities > score_threshold).nonzero(as_tuple=True)
            boxes, scores = boxes[anchors], probabilities[anchors, classes]
        else:
            scores, classes = probabilities.max(1)
            keep = scores > score_threshold
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        chosen = batched_nms(boxes, scores, classes, iou_threshold)[:max_detections]
        detections.append((boxes[chosen], scores[chosen], classes[chosen]))
    return detections


@torch.no_grad()
def evaluate_dense(model: Program | torch.nn.Module, batches: Iterable, *, task: str, num_classes: int,
                   decode: Callable[[object], Detections] = decode_yolo) -> dict:
    """The task's scores of `model` over `(inputs, labels)` batches, in eval mode (restored after):
    `task` "segmentation" (the logits are the model's output, its 'out' entry or first item) or
    "detection" (the output goes through `decode`)."""
    if task not in ("segmentation", "detection"):
        raise PrunefxError(f"dense task must be 'segmentation' or 'detection', got {task!r}")
    if isinstance(model, torch.fx.GraphModule):  # a graph's mode lives in its nodes: only Program flips it
        model = Program(model, (), name="model")
    module = model.module if isinstance(model, Program) else model
    device = module_device(module)
    score = SegmentationScore(num_classes) if task == "segmentation" else DetectionScore(num_classes=num_classes)
    with evaluating(model):
        for batch in batches:
            inputs, labels = split_batch(batch)
            output = module(*as_program_inputs(inputs, model.example_inputs if isinstance(model, Program) else (),
                                               device))
            if task == "segmentation":
                score.update(logits_of(output), labels)
            else:
                score.update(decode(output), labels)
    return score.compute()
