"""A pruned Ultralytics YOLO back in Ultralytics' own classes, for its own `train`, `val` and `export`.

`to_ultralytics_module(program, detection_model)` is `prunefx.to_module` (prunefx/interop/write_back.py: tensors
copied by name, size attributes set, outputs proven equal to the Program) with the resizers YOLO's blocks
need, then the Detect head put back from export mode (prunefx/models/ultralytics_models.py captures that mode) to the mode
Ultralytics trains in. Ultralytics is AGPL-3.0 and never a dependency of prunefx: it is imported here
only when a caller hands over one of its models.

YOLO's split blocks need resizers and pruned classes (prunefx/interop/ultralytics_blocks.py).
`Attention` (in C2PSA) views its values with its input's width: prune with `keep=keep_nodes(program)`,
which holds its widths (the rest of the model prunes freely).
"""

from __future__ import annotations

import torch
from torch import nn

from prunefx.detectors import softmax_nodes
from prunefx.graph import Program
from prunefx.graph.model_state import hook_state_kept
from prunefx.interop.module_resizers import ResizeError
from prunefx.interop.recovery import frozen_copy
from prunefx.interop.ultralytics_blocks import pruned_class, register_resizers

__all__ = ["DistilledCriterion", "detect_head", "export_mode", "keep_nodes", "prune_while_training_trainer",
           "pruned_class", "register_resizers", "to_ultralytics_module", "training_mode"]


def __getattr__(name: str):
    # checkpoints pickled before the blocks had their own module name their pruned classes here
    from prunefx.interop import ultralytics_blocks

    return ultralytics_blocks.__getattr__(name)

_FIXED_WIDTH_BLOCKS = ("ultralytics.nn.modules.block.Attention",)


def keep_nodes(program: Program) -> list[str]:
    """Graph nodes whose channels must stay for the write-back to hold (remove_channels' `keep`): the
    softmax of the box distribution (prunefx.detectors.softmax_nodes), and every node inside an Attention
    block (C2PSA): its eager forward views the values with its input's width, so a head dim pruned on its
    own, which the graph allows, would not fit the eager module."""
    inside = [node.name for node in program.graph.nodes if any(
        scope[1] in _FIXED_WIDTH_BLOCKS for scope in (node.meta.get("nn_module_stack") or {}).values())]
    return softmax_nodes(program) + inside


def detect_head(model: nn.Module) -> nn.Module:
    heads = [m for m in model.modules() if hasattr(m, "export") and hasattr(m, "stride") and hasattr(m, "reg_max")]
    if len(heads) != 1:
        raise ResizeError(f"{type(model).__name__} has {len(heads)} Detect heads, not one")
    return heads[0]


def training_mode(model: nn.Module) -> nn.Module:
    """Undo prunefx/models/ultralytics_models.py's export mode on the Detect head: Ultralytics trains and validates this."""
    head = detect_head(model)
    head.export, head.dynamic = False, False
    head.stride = model.stride.detach().clone()
    if getattr(head, "prunefx_end2end", False):  # the one-to-one branch was set aside for the capture
        head.end2end = True
        del head.prunefx_end2end
    return model


def export_mode(model: nn.Module) -> nn.Module:
    """The Detect head in the mode the Program was captured in (decoded boxes and scores, one tensor)."""
    from prunefx.models.ultralytics_models import prepare_ultralytics
    return prepare_ultralytics(model)


def to_ultralytics_module(program: Program, detection_model: nn.Module) -> nn.Module:
    """A copy of `detection_model` (the export-mode DetectionModel `program` was captured from, e.g. by
    `prunefx.models.ultralytics_detector`) holding the pruned widths, proven against `program`, with its
    Detect head ready for Ultralytics' trainer. Raises a PrunefxError naming what it could not set."""
    from prunefx.interop.write_back import to_module
    register_resizers()
    return training_mode(to_module(program, detection_model, config=False, same_class=True))


def _one_to_many(raw: dict) -> dict:
    """The one-to-many branch's raw outputs of a head that trains two (YOLOv10, YOLO26): the one distilled."""
    return raw["one2many"] if "one2many" in raw else raw


class DistilledCriterion:
    """Ultralytics' own detection loss plus prunefx's detection distillation from a frozen dense YOLO
    (passes/training_losses.detection_kd_loss on both heads' decoded outputs: class probabilities and
    boxes, weighted by the teacher's confidence), times `weight`."""

    def __init__(self, model: nn.Module, teacher: nn.Module, weight: float):
        self.criterion, self.head, self.weight = model.init_criterion(), detect_head(model), weight
        self.teacher, self.teacher_head = teacher, detect_head(teacher)

    def __call__(self, preds, batch):
        from prunefx.passes.training.losses import detection_kd_loss
        loss, items = self.criterion(preds, batch)  # per term (box, cls, dfl), times the batch size
        raw = _one_to_many(preds[1] if isinstance(preds, tuple) else preds)
        with torch.no_grad(), hook_state_kept(self.teacher):  # a copy sharing the closures of the user's hooks
            taught = _one_to_many(self.teacher(batch["img"])[1])  # eval mode: (decoded, raw), decoded below
        kd = detection_kd_loss(self.head._inference(raw), self.teacher_head._inference(taught))
        # Spread over the terms: the trainer sums them, so each gets its share of weight * kd * batch size.
        return loss + self.weight * kd * len(batch["img"]) / loss.numel(), items


def prune_while_training_trainer(session, *, teacher: nn.Module | None = None, kd_weight: float = 1.0):
    """Ultralytics' DetectionTrainer running CPD's schedule (a prunefx.PruneWhileTraining `session` made with
    `write_back=lambda program: to_ultralytics_module(program, dense)`): it trains `session.module`; Fisher
    scores are read in `optimizer_step`, where Ultralytics' gradients are complete (its callbacks run after
    they are zeroed); after a cut the trainer continues on the written-back module with the same optimizer
    (its state sliced to the channels kept) and a new EMA of the pruned model. With `teacher` (the dense
    model in training mode, e.g. `training_mode(copy.deepcopy(dense))`), the loss adds its distillation
    (DistilledCriterion) from an eval-mode copy without gradients: the caller's teacher is left as found."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import ModelEMA

    frozen = None if teacher is None else frozen_copy(teacher)

    class PruneWhileTrainingTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            self.add_callback("on_train_start", lambda trainer: trainer.distil())
            return session.module

        def distil(self):
            if frozen is not None:  # after the EMA copy is made: the EMA must not carry the teacher
                self.model.criterion = DistilledCriterion(self.model, frozen.to(self.device), kd_weight)

        def optimizer_step(self):
            # Ultralytics unscales its AMP gradients inside optimizer_step: they are read here at the scaler's scale
            session.after_backward(loss_scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
            super().optimizer_step()
            if session.maybe_cut(self.optimizer):
                self.model = session.module.to(self.device).train()
                self.set_model_attributes()
                updates = self.ema.updates if self.ema else 0
                self.ema = ModelEMA(self.model)
                self.ema.updates = updates
                self.distil()

    return PruneWhileTrainingTrainer
