"""The recovery trainer's losses (task, distillation, feature) and how it reads intermediate tensors.

`(1 - kd_weight) * CE + kd_weight * T^2 * KL(teacher || student)` plus feature MSE terms; a detector
(a YOLO's export-mode output) distils boxes and class scores with no ground-truth term. The formulas and
why detection has no task loss: see docs/algorithms.md, 'The losses'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.graph.in_place_writes import as_computed
from prunefx.passes.training.config import DETECTION, TrainConfig, TrainingError

IGNORE_LABEL = -1


# --- losses --------------------------------------------------------------------------------------

def in_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A half or bfloat16 output (a half-precision Program, a loss under autocast) in float32: its sums pass
    65504 on a segmentation map, and 1 - 1e-6 rounds to 1, so a clamp keeps no probability off 0 or 1."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


def _class_last(logits: torch.Tensor) -> torch.Tensor:
    """[N, C] stays; [N, C, *spatial] becomes [N * prod(spatial), C]: one distribution per pixel."""
    if logits.dim() <= 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over rows."""
    if student_logits.shape != teacher_logits.shape:
        raise TrainingError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape")
    student, teacher = in_float32(_class_last(student_logits)), in_float32(_class_last(teacher_logits))
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


_PROBABILITY_EPS = 1e-6
_MIN_BOX_SIZE = 1.0  # pixels: a degenerate teacher box must not blow the scale-free L1 up


def detection_kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, box_dims: int = 4) -> torch.Tensor:
    """Distillation between two detectors' outputs in the YOLO export layout: the class term plus the box term.

    Layout ([N, box_dims + C, A], `decode_yolo` in prunefx/dense_tasks.py): rows 0-3 are decoded boxes
    (cx, cy, w, h in pixels), rows 4.. independent per-class sigmoid probabilities, A anchors. A softmax
    KL over dim 1 would mix pixels with probabilities, so each part gets its own term:

    - class: per class the Bernoulli KL(teacher || student) = BCE(student p, teacher p) - H(teacher p),
      summed over classes, averaged over anchors and images (p clamped to (eps, 1 - eps)). Its gradient
      is the BCE's (the teacher's entropy is a constant), and it is 0 when the student matches;
    - box: sum over the 4 coordinates of |student - teacher| / teacher size ((w + h) / 2, at least
      1 pixel), so small and large objects count alike, averaged over anchors with weights = the
      teacher's highest class probability. Most anchors see background, where the teacher's box is
      meaningless: unweighted, matching that noise would drown the few anchors that hold objects.
    """
    if student.shape != teacher.shape:
        raise TrainingError(f"student output {tuple(student.shape)} and teacher output "
                            f"{tuple(teacher.shape)} differ in shape")
    if student.dim() != 3 or student.shape[1] <= box_dims:
        raise TrainingError(f"a detector's output must be N x ({box_dims} + classes) x anchors, "
                            f"got {tuple(student.shape)}")
    student, teacher = in_float32(student), in_float32(teacher)
    return (_class_distillation(student[:, box_dims:], teacher[:, box_dims:])
            + _box_distillation(student[:, :box_dims], teacher[:, :box_dims], teacher[:, box_dims:]))


def _class_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Bernoulli KL per class and anchor ([N, C, A] probabilities), summed over C, mean over N and A."""
    low, high = _PROBABILITY_EPS, 1 - _PROBABILITY_EPS
    s, t = student.clamp(low, high), teacher.clamp(low, high)
    kl = t * (t.log() - s.log()) + (1 - t) * ((1 - t).log() - (1 - s).log())
    return kl.sum(1).mean()


def _box_distillation(student: torch.Tensor, teacher: torch.Tensor, teacher_classes: torch.Tensor) -> torch.Tensor:
    """Scale-free L1 between [N, 4, A] boxes, weighted per anchor by the teacher's confidence."""
    size = ((teacher[:, 2] + teacher[:, 3]) / 2).clamp(min=_MIN_BOX_SIZE)  # [N, A]
    error = (student - teacher).abs().sum(1) / size
    weight = teacher_classes.max(1).values  # [N, A]; ~0 where the teacher sees no object
    return (weight * error).sum() / weight.sum().clamp(min=_PROBABILITY_EPS)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two intermediate tensors of the same shape."""
    if student.shape != teacher.shape:
        raise TrainingError(f"feature shapes differ: student {tuple(student.shape)}, teacher "
                            f"{tuple(teacher.shape)}; pick tensors whose widths were not pruned")
    return F.mse_loss(in_float32(student), in_float32(teacher))


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled items (label -1 is padding); 0, with a graph, when there are none."""
    total = F.cross_entropy(in_float32(logits), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (labels != IGNORE_LABEL).sum().clamp(min=1)


def check_labels(logits: tuple[int, ...], labels: torch.Tensor) -> None:
    """Labels logits of shape `logits` can be scored on: class indices in [0, classes) or -1, one per item (per
    pixel for dense logits). Checked on a run's first batch: a wrong one fails inside cross-entropy as an
    IndexError, and on a GPU as a device-side assert that leaves the process unusable."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TrainingError(f"labels must be class indices (an integer tensor), not {str(labels.dtype)[6:]}")
    expected = (logits[0], *logits[2:])
    if tuple(labels.shape) != expected:
        raise TrainingError(f"labels of shape {tuple(labels.shape)} do not go with logits of shape "
                            f"{tuple(logits)}: expected {expected}, a class index per item")
    classes = logits[1]
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < IGNORE_LABEL or high >= classes:
            raise TrainingError(f"labels must lie in [0, {classes - 1}] ({IGNORE_LABEL} for none): the model scores "
                                f"{classes} classes, the batch holds labels from {low} to {high}")


def logits_shape(output_shapes: Sequence[tuple[int, ...]], out_spec) -> tuple[int, ...] | None:
    """The shape of the logits among outputs of these shapes (nested by `out_spec`, where the graph has one),
    found without running the model, on stand-ins that hold no data; None where the tensors' shapes alone cannot
    stand for the outputs (a model that also returns a number)."""
    flat = [torch.empty(shape, device="meta") for shape in output_shapes]
    try:
        return tuple(logits_of(pytree.tree_unflatten(flat, out_spec) if out_spec is not None else flat).shape)
    except (ValueError, TypeError, IndexError, KeyError, TrainingError):
        return None


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, the first item of a tuple or list, or the
    'out' entry (else the first value) of a dict (torchvision segmentation models return {'out': ...})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if isinstance(output, Mapping) and output:
        return logits_of(output["out"] if "out" in output else next(iter(output.values())))
    raise TrainingError(f"cannot find logits in a model output of type {type(output).__name__}")


# --- reading intermediate tensors ----------------------------------------------------------------

def tap_outputs(module: torch.fx.GraphModule, names: Sequence[str]) -> torch.fx.GraphModule:
    """A copy of `module` whose forward returns `(output, (tensor of node names[0], ...))`.

    The copy shares parameters and buffers with `module` (training one trains the other); only the
    graph is new. Cheaper than an fx Interpreter, which runs node by node in Python."""
    nodes = {node.name: node for node in module.graph.nodes}
    missing = [name for name in names if name not in nodes]
    if missing:
        sample = ", ".join(n.name for n in module.graph.nodes if n.op == "call_function")
        raise TrainingError(f"no node named {', '.join(map(repr, missing))} in the graph (nodes: {sample[:400]})")
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    output = graph.graph_copy(module.graph, copies)
    graph.output((output, tuple(as_computed(module.graph, graph, copies, [nodes[name] for name in names]))))
    tapped: Any = torch.fx.GraphModule(module, graph)  # out_spec is set on it below
    # torch.export's graphs return flat outputs re-nested by a pytree spec; keep it to rebuild them.
    info = getattr(module.graph._codegen, "pytree_info", None)
    tapped.out_spec = info.out_spec if info is not None else None
    return tapped


def run_tapped(tapped: torch.nn.Module, out_spec, inputs: tuple[torch.Tensor, ...]):
    output, features = tapped(*inputs)
    if out_spec is not None:
        output = pytree.tree_unflatten(list(output), out_spec)
    return output, features


def total_losses(config: TrainConfig, output, features, teacher_output, teacher_features,
                 labels) -> dict[str, torch.Tensor]:
    """The trainer's loss and its terms ("loss", "task", "kd", "feature"), as passes/training/engine.py defines them."""
    logits = logits_of(output)
    feature = logits.new_zeros(())
    for pair, student_value, teacher_value in zip(config.feature_pairs, features, teacher_features):
        feature = feature + pair.weight * feature_loss(student_value, teacher_value)
    if config.task == DETECTION:
        return _detection_losses(config, logits, teacher_output, feature)
    alpha = config.kd_weight
    # Both are computed whatever alpha is, so the statistics always show them; distillation alone (alpha 1) needs
    # no labels, and without them its task term is zero.
    task = logits.new_zeros(()) if labels is None and alpha >= 1 else task_loss(logits, labels)
    kd = (kd_loss(logits, logits_of(teacher_output), config.temperature) if teacher_output is not None
          else logits.new_zeros(()))
    return {"loss": (1 - alpha) * task + alpha * kd + feature, "task": task, "kd": kd, "feature": feature}


def _detection_losses(config: TrainConfig, logits, teacher_output, feature) -> dict[str, torch.Tensor]:
    """KD_det + features, no task term. The labels never reach a loss: a detector's targets (class, box rows)
    are no class indices, and cross-entropy on them would be nonsense."""
    kd = detection_kd_loss(logits, logits_of(teacher_output))  # a detector always has a teacher
    loss = kd + feature if config.kd_weight > 0 else feature  # kd is still shown when off
    return {"loss": loss, "task": logits.new_zeros(()), "kd": kd, "feature": feature}
