"""A pruned Ultralytics YOLO back in Ultralytics' own classes, for its own `train`, `val` and `export`.

`to_ultralytics_module(program, detection_model)` is `prunefx.to_module` (prunefx/interop/write_back.py: tensors
copied by name, size attributes set, outputs proven equal to the Program) with the resizers YOLO's blocks
need, then the Detect head put back from export mode (prunefx/models/ultralytics_models.py captures that mode) to the mode
Ultralytics trains in. Ultralytics is AGPL-3.0 and never a dependency of prunefx: it is imported here
only when a caller hands over one of its models.

Why YOLO's blocks need resizers. C2f (and C3k2, its subclass) split `cv1`'s output into two halves with
`chunk(2)`, C2PSA with `split((c, c))`: the channel removal prunes each half by its own importance (the
graph splits into segments, graph/channels/rules_reshape.py), so the halves end up of different widths,
which neither eager forward can express. Their pruned modules become `PrunedC2f`, `PrunedC3k2`,
`PrunedC2PSA`: subclasses whose only change is a forward splitting at the pruned widths (`split_sizes`);
the classes are made on first use and found by name (this module's `__getattr__`), so a pickled pruned
model (Ultralytics' own checkpoints: best.pt, last.pt) loads again where prunefx is installed.
`Attention` (in C2PSA) views its values with its input's width: prune with `keep=keep_nodes(program)`,
which holds its widths (the rest of the model prunes freely).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunefx.detectors import softmax_nodes
from prunefx.graph import Program
from prunefx.interop.module_resizers import ResizeError, register_module_resizer, resize_attributes

_SPLIT_BLOCKS = ("C2f", "C3k2", "C2PSA")
_PREFIX = "Pruned"
_CLASSES: dict[str, type] = {}


def _c2f_forward(self, x: torch.Tensor) -> torch.Tensor:
    y = list(self.cv1(x).split(self.split_sizes, 1))
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _c2psa_forward(self, x: torch.Tensor) -> torch.Tensor:
    a, b = self.cv1(x).split(self.split_sizes, dim=1)
    return self.cv2(torch.cat((a, self.m(b)), 1))


def pruned_class(base: type) -> type:
    """The subclass of an Ultralytics split block whose forward splits at `split_sizes`."""
    name = _PREFIX + base.__name__
    if name not in _CLASSES:
        forward = _c2psa_forward if base.__name__ == "C2PSA" else _c2f_forward
        # Ultralytics' ONNX export switches C2f to `forward_split`: both split at the pruned widths.
        _CLASSES[name] = type(name, (base,), {"forward": forward, "forward_split": forward, "__module__": __name__,
                                              "__qualname__": name,
                                              "__doc__": f"{base.__name__} with halves of pruned widths."})
    return _CLASSES[name]


def __getattr__(name: str):
    # pickle finds classes by module and name: make a pruned block class when a checkpoint asks for it
    # (the split blocks and their subclasses, such as YOLOv10's C2fCIB).
    if name.startswith(_PREFIX):
        from ultralytics.nn.modules import block
        base = getattr(block, name[len(_PREFIX):], None)
        if isinstance(base, type) and any(cls.__name__ in _SPLIT_BLOCKS for cls in base.__mro__):
            return pruned_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _first_conv_width(module: nn.Module) -> int:
    """Input channels of the first convolution inside `module` (what the second half feeds)."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ResizeError(f"{type(module).__name__} holds no convolution")
    if conv.groups > 1 and conv.groups == conv.in_channels:  # depthwise (CIB): its groups are not reset yet
        return int(conv.weight.shape[0] // (conv.out_channels // conv.groups))
    return int(conv.weight.shape[1] * conv.groups)


def _split_block(module: nn.Module, changes) -> None:
    """Halves of `cv1`'s output: the second feeds `m[0]`, the first is the rest."""
    total = int(module.cv1.conv.weight.shape[0])
    second = _first_conv_width(module.m[0] if isinstance(module.m, nn.ModuleList) else module.m)
    if not 0 < second < total:
        raise ResizeError(f"cannot split {total} channels of {type(module).__name__}.cv1 around {second}")
    module.split_sizes = (total - second, second)
    module.c = second
    if not type(module).__name__.startswith(_PREFIX):
        module.__class__ = pruned_class(type(module))


_FIXED_WIDTH_BLOCKS = ("ultralytics.nn.modules.block.Attention",)


def keep_nodes(program: Program) -> list[str]:
    """Graph nodes whose channels must stay for the write-back to hold (remove_channels' `keep`): the
    softmax of the box distribution (prunefx.detectors.softmax_nodes), and every node inside an Attention
    block (C2PSA): its eager forward views the values with its input's width, so a head dim pruned on its
    own, which the graph allows, would not fit the eager module."""
    inside = [node.name for node in program.graph.nodes if any(
        scope[1] in _FIXED_WIDTH_BLOCKS for scope in (node.meta.get("nn_module_stack") or {}).values())]
    return softmax_nodes(program) + inside


def _detect_head(module: nn.Module, changes) -> None:
    """A Detect head's own sizes; and where it trains a one-to-one branch (YOLOv10, YOLO26) that the captured
    forward did not run, that branch made again as a copy of the pruned one-to-many branch (as Ultralytics
    builds it), so that it takes the pruned features; training then teaches it again."""
    resize_attributes(module, changes)
    for name in [name for name in module._modules if name.startswith("one2one_")]:  # cv2, cv3, and a task's cv4
        many, one = getattr(module, name[len("one2one_"):], None), getattr(module, name)
        if many is None or one is None:
            continue
        if [p.shape for p in many.parameters()] != [p.shape for p in one.parameters()]:
            setattr(module, name, copy.deepcopy(many))


def register_resizers() -> None:
    """Register the resizers of YOLO's blocks with the write-back (imports ultralytics)."""
    from ultralytics.nn.modules import block, head
    for name in _SPLIT_BLOCKS:
        if hasattr(block, name):
            register_module_resizer(getattr(block, name), _split_block)
    register_module_resizer(head.Detect, _detect_head)


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
    return training_mode(to_module(program, detection_model, config=False))


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
        with torch.no_grad():
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
    model, e.g. `training_mode(copy.deepcopy(dense))`), the loss adds its distillation (DistilledCriterion)."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import ModelEMA

    frozen = None if teacher is None else teacher.eval().requires_grad_(False)

    class PruneWhileTrainingTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            self.add_callback("on_train_start", lambda trainer: trainer.distil())
            return session.module

        def distil(self):
            if frozen is not None:  # after the EMA copy is made: the EMA must not carry the teacher
                self.model.criterion = DistilledCriterion(self.model, frozen.to(self.device), kd_weight)

        def optimizer_step(self):
            session.after_backward()
            super().optimizer_step()
            if session.maybe_cut(self.optimizer):
                self.model = session.module.to(self.device).train()
                self.set_model_attributes()
                updates = self.ema.updates if self.ema else 0
                self.ema = ModelEMA(self.model)
                self.ema.updates = updates
                self.distil()

    return PruneWhileTrainingTrainer
