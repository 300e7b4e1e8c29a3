"""The recovery trainer's losses (task, distillation, feature) and how it reads intermediate tensors.

The formulas are in passes/training.py's docstring. Dense outputs (segmentation, [N, C, H, W]) are
handled per pixel: the class dim is always dim 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

from prunefx.passes.training_config import TrainingError

IGNORE_LABEL = -1


# --- losses --------------------------------------------------------------------------------------

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
    student, teacher = _class_last(student_logits), _class_last(teacher_logits)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two intermediate tensors of the same shape."""
    if student.shape != teacher.shape:
        raise TrainingError(f"feature shapes differ: student {tuple(student.shape)}, teacher "
                            f"{tuple(teacher.shape)}; pick tensors whose widths were not pruned")
    return F.mse_loss(student, teacher)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled items (label -1 is padding); 0, with a graph, when there are none."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (labels != IGNORE_LABEL).sum().clamp(min=1)


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
    graph.output((output, tuple(copies[nodes[name]] for name in names)))
    tapped = torch.fx.GraphModule(module, graph)
    # torch.export's graphs return flat outputs re-nested by a pytree spec; keep it to rebuild them.
    info = getattr(module.graph._codegen, "pytree_info", None)
    tapped.out_spec = info.out_spec if info is not None else None
    return tapped


def run_tapped(tapped: torch.nn.Module, out_spec, inputs: tuple[torch.Tensor, ...]):
    output, features = tapped(*inputs)
    if out_spec is not None:
        output = pytree.tree_unflatten(list(output), out_spec)
    return output, features
