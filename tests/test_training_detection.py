"""Recovery training of detectors (task "detection"): detection_kd_loss on the YOLO export layout
[N, 4 + C, A], a trainer that distils without touching the labels, and compress handing the task over."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunefx.data.splits import CLASSIFICATION, DETECTION, SEGMENTATION, DataSplits, tensor_batches
from prunefx.graph import capture
from prunefx.graph.errors import PrunefxError
from prunefx.passes import distill
from prunefx.passes.core.pipeline import Pipeline, Step
from prunefx.passes.training.config import TASKS
from prunefx.passes.training.engine import TrainConfig, Trainer, TrainingError, detection_kd_loss

BATCH, CLASSES, SIZE = 4, 3, 8


class TinyDetector(nn.Module):
    """A YOLO-shaped export output: per pixel an anchor, 4 box rows in pixels, then class probabilities."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4 + CLASSES, 1))

    def forward(self, x):
        raw = self.body(x).flatten(2)  # [N, 4 + C, H * W]
        return torch.cat([SIZE * 2 * torch.sigmoid(raw[:, :4]), torch.sigmoid(raw[:, 4:])], 1)


def _detector(seed: int):
    torch.manual_seed(seed)
    return capture(TinyDetector().eval(), torch.randn(BATCH, 3, SIZE, SIZE), name=f"det{seed}").eval()


def _labels(count: int) -> torch.Tensor:
    """Detection targets N x 3 x 5 (class, x1, y1, x2, y2), one item per image, padding rows of -1."""
    labels = torch.full((count, 3, 5), -1, dtype=torch.int64)
    labels[:, 0] = torch.tensor([1, 0, 0, 4, 4])
    return labels


def _batches(count: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=generator), _labels(BATCH)) for _ in range(count)]


def _output(boxes, probabilities) -> torch.Tensor:
    """[1, 4 + C, A] from per-anchor box rows and class-probability rows."""
    return torch.cat([torch.tensor(boxes, dtype=torch.float64).T, torch.tensor(probabilities, dtype=torch.float64).T],
                     0)[None]


# --- the loss ------------------------------------------------------------------------------------

def test_detection_kd_loss_is_zero_only_when_the_student_matches():
    torch.manual_seed(0)
    teacher = torch.cat([torch.rand(2, 4, 6) * 20, torch.rand(2, CLASSES, 6)], 1)
    assert detection_kd_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    moved_class = teacher.clone()
    moved_class[:, 4:] = moved_class[:, 4:].flip(2)
    moved_box = teacher.clone()
    moved_box[:, 0] += 3.0
    assert detection_kd_loss(moved_class, teacher) > 1e-3
    assert detection_kd_loss(moved_box, teacher) > 1e-3


def test_the_class_term_is_the_bernoulli_kl_summed_over_classes_and_averaged_over_anchors():
    boxes = [[5.0, 5.0, 2.0, 2.0], [9.0, 9.0, 4.0, 4.0]]  # equal boxes: the box term is 0
    teacher_p = [[0.9, 0.2], [0.1, 0.05]]
    student_p = [[0.6, 0.3], [0.4, 0.01]]

    def bce(s, t):  # the student's binary cross-entropy against the teacher's soft target
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    # BCE minus the teacher's entropy (BCE at s = t): same gradient as the BCE, 0 at the match.
    by_hand = sum(bce(s, t) - bce(t, t) for s_row, t_row in zip(student_p, teacher_p)
                  for s, t in zip(s_row, t_row)) / len(boxes)
    loss = detection_kd_loss(_output(boxes, student_p), _output(boxes, teacher_p))
    assert loss.item() == pytest.approx(by_hand, rel=1e-9)


def test_the_box_term_is_scale_free_and_weighted_by_the_teachers_confidence():
    probabilities = [[0.8, 0.1], [0.2, 0.05]]  # weights: the highest class probability, 0.8 and 0.2
    teacher = _output([[10.0, 10.0, 4.0, 6.0], [3.0, 3.0, 0.2, 0.2]], probabilities)
    student = _output([[11.0, 10.0, 4.0, 6.0], [3.0, 3.0, 0.2, 0.2]], probabilities)
    # anchor 0: |1| / ((4 + 6) / 2) = 0.2, weight 0.8; anchor 1 matches; normalised by 0.8 + 0.2
    assert detection_kd_loss(student, teacher).item() == pytest.approx(0.8 * 0.2 / 1.0)
    # anchor 1's box is below a pixel: its size counts as 1 pixel, so the error is not blown up
    student = _output([[10.0, 10.0, 4.0, 6.0], [3.5, 3.0, 0.2, 0.2]], probabilities)
    assert detection_kd_loss(student, teacher).item() == pytest.approx(0.2 * 0.5 / 1.0)


def test_the_box_term_ignores_anchors_where_the_teacher_sees_nothing():
    torch.manual_seed(0)
    teacher = torch.cat([torch.rand(2, 4, 6) * 20 + 1, torch.rand(2, CLASSES, 6)], 1)
    teacher[:, 4:, 2] = 0.0  # anchor 2: no object
    student = teacher + 0.05 * torch.randn_like(teacher)
    student[:, 4:] = student[:, 4:].clamp(0.01, 0.99)
    before = detection_kd_loss(student, teacher)
    elsewhere = student.clone()
    elsewhere[:, :4, 2] += 50.0  # a wild box where the teacher sees nothing
    assert detection_kd_loss(elsewhere, teacher).item() == pytest.approx(before.item(), rel=1e-12)
    seen = student.clone()
    seen[:, :4, 3] += 50.0  # the same change where it does see something
    assert detection_kd_loss(seen, teacher) > before + 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_detector_distils_to_the_float32_loss_of_the_same_values(dtype):
    """Under autocast (Ultralytics' trainer) the heads' probabilities come in half precision, where 1 - 1e-6 rounds
    to 1: a teacher certain of a class made the class term 0 * log(0), NaN. The loss is the float32 one of the same
    values (the oracle: the loss of the values cast up first)."""
    torch.manual_seed(0)
    teacher = torch.cat([torch.rand(2, 4, 6) * 20 + 1, torch.rand(2, CLASSES, 6)], 1).to(dtype)
    teacher[0, 4, 0], teacher[1, 5, 3] = 1.0, 0.0  # certain of a class, and of its absence
    student = teacher.clone()
    student[:, 4:] = student[:, 4:].flip(2)
    loss = detection_kd_loss(student, teacher)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(detection_kd_loss(student.float(), teacher.float()).item(), rel=1e-6)


def test_half_precision_logits_of_a_segmentation_map_sum_their_losses_in_float32():
    """A cross-entropy summed over 8 x 256 x 256 pixels passes float16's largest value, 65504: the loss was inf
    and the trainer stopped as diverged at its first step."""
    from prunefx.passes.training.losses import kd_loss, task_loss

    torch.manual_seed(0)
    logits = (torch.randn(8, 21, 256, 256) * 3).half()
    labels = torch.randint(0, 21, (8, 256, 256))
    expected = task_loss(logits.float(), labels)
    assert task_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    teacher = (torch.randn(8, 21, 256, 256) * 3).half()
    assert kd_loss(logits, teacher).item() == pytest.approx(kd_loss(logits.float(), teacher.float()).item(),
                                                           rel=1e-5)


def test_detection_kd_loss_refuses_other_shapes():
    with pytest.raises(TrainingError, match="differ in shape"):
        detection_kd_loss(torch.rand(1, 7, 4), torch.rand(1, 7, 5))
    with pytest.raises(TrainingError, match="anchors"):
        detection_kd_loss(torch.rand(2, 7), torch.rand(2, 7))
    with pytest.raises(TrainingError, match="anchors"):
        detection_kd_loss(torch.rand(1, 4, 3), torch.rand(1, 4, 3))  # boxes and no class row


# --- the config ----------------------------------------------------------------------------------

def test_the_task_is_a_checked_field_named_like_the_data_sets_tasks():
    assert set(TASKS) == {CLASSIFICATION, SEGMENTATION, DETECTION}
    assert TrainConfig(steps=1).task == CLASSIFICATION
    assert TrainConfig(steps=1, task="detection").task == DETECTION
    with pytest.raises(TrainingError, match="'task' must be one of classification, segmentation, detection"):
        TrainConfig(steps=1, task="keypoints")


def test_a_detector_with_nothing_to_distil_is_refused():
    with pytest.raises(TrainingError, match="detection.*kd_weight > 0 or give feature_losses"):
        TrainConfig(steps=1, task="detection", kd_weight=0.0)
    TrainConfig(steps=1, task="detection", kd_weight=0.0, feature_losses={"a": "b"})  # features: fine
    TrainConfig(steps=1, task="classification", kd_weight=0.0)  # plain fine-tuning on labels: fine


# --- the trainer ---------------------------------------------------------------------------------

def _never(*args, **kwargs):
    raise AssertionError("cross-entropy on detection labels")


def _distance(student, teacher, batches) -> float:
    with torch.no_grad():
        return sum(detection_kd_loss(student.module(x), teacher.module(x)).item() for x, _ in batches)


def test_the_trainer_distils_a_detector_without_reading_its_labels(monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _never)
    student, teacher = _detector(0), _detector(1)
    held_out = _batches(2, seed=7)
    before = _distance(student, teacher, held_out)
    config = TrainConfig(steps=40, optimizer="adamw", lr=0.01, weight_decay=0.0, task="detection",
                         eval_every=10, progress=False)
    trainer = Trainer(student, teacher=teacher, data=_batches(4), config=config, eval_data=held_out)
    stats = trainer.fit()
    assert _distance(trainer.program, teacher, held_out) < 0.7 * before
    assert stats["task_loss"] == 0.0 and stats["kd_loss"] > 0 and stats["train_loss"] == stats["kd_loss"]
    assert trainer.log[-1]["kd"] < trainer.log[0]["kd"]
    assert stats["eval"] == []  # top-1 accuracy means nothing for boxes: not evaluated here
    with pytest.raises(TrainingError, match="no evaluation data"):
        trainer.evaluate()


# --- compress hands the data set's task over ----------------------------------------------------

def test_compress_injects_the_data_sets_task_into_the_training_passes(monkeypatch):
    from prunefx.compression import inject

    images = torch.randn(16, 3, SIZE, SIZE)
    loader = tensor_batches(images, _labels(16), BATCH, shuffle=False)
    splits = DataSplits(train=loader, val=loader, test=loader, classes=tuple("abc"),
                        input_shape=(3, SIZE, SIZE), task=DETECTION)
    dense = _detector(0)
    pipeline = Pipeline([Step(distill, {"steps": 2, "progress": False})])
    injected, keys = inject(pipeline, dense, splits, data="fashion-mnist-det")
    assert keys == [["data", "eval_data", "task", "teacher"]]
    config = injected.steps[0].config
    assert config["task"] == DETECTION
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", _never)
    result = distill(_detector(2), config=config)  # a different student, so there is something to distil
    assert result.stats["task_loss"] == 0.0 and result.stats["kd_loss"] > 0
    # a recipe that fine-tunes on labels only cannot train a detector: refused once the task is known
    refused = Pipeline([Step(distill, {"steps": 2, "kd_weight": 0.0})])
    with pytest.raises(PrunefxError, match="step 1 .*kd_weight > 0.*no pass has run"):
        inject(refused, dense, splits, data="fashion-mnist-det")


def test_a_model_with_every_parameter_frozen_is_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).requires_grad_(False)
    program = capture(model, torch.randn(2, 3, 4, 4))
    data = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))]
    with pytest.raises(TrainingError, match="no parameter of the model requires grad"):
        Trainer(program, teacher=None, data=data, config=TrainConfig(steps=1, kd_weight=0.0)).fit()
