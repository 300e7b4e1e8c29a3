"""Ultralytics YOLO models (`ultralytics:NAME`) in their export-mode forward: decoded boxes and class scores, no NMS.

Ultralytics is AGPL-3.0: imported here only when a user names an Ultralytics model, never a dependency of prunefx.
Checkpoints are pickled: load only files you trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from prunefx.graph.errors import first_line
from prunefx.models.spec import ModelReferenceError, ModelSpec

ULTRALYTICS_IMAGE_SIZE = 640  # the size Ultralytics trains and predicts at


def ultralytics_model(name: str, image_size: int | None) -> ModelSpec:
    module = ultralytics_detector(name)
    size = image_size or ULTRALYTICS_IMAGE_SIZE
    stride = int(max(module.stride))
    if size % stride:
        raise ModelReferenceError(f"ultralytics:{name} takes images whose size is a multiple of {stride}, not {size}")
    return ModelSpec(module, None, f"ultralytics:{name}", (1, 3, size, size))


def ultralytics_detector(name: str) -> torch.nn.Module:
    """An Ultralytics DetectionModel from a shipped yaml (no weights) or a checkpoint, set to its export-mode
    forward (what Ultralytics' own ONNX export traces): one tensor of decoded boxes and class scores."""
    try:
        from ultralytics.nn.tasks import load_checkpoint
    except ImportError as error:  # AGPL-3.0: installed by the user (or `pip install -e .[dev]`), never by us
        raise ModelReferenceError(f"ultralytics:{name} needs the ultralytics package: pip install ultralytics "
                                  f"({first_line(error)})") from error
    # the shell leaves `~` after `ultralytics:` alone; a name (yolov8n.yaml) is unchanged by this
    name = os.path.expanduser(name)
    if name.endswith((".yaml", ".yml")):
        try:
            model = _ultralytics_model_class(name)(name, verbose=False)
        except Exception as error:  # a missing or malformed yaml surfaces as many types
            raise ModelReferenceError(f"ultralytics cannot build {name}: {first_line(error)}") from error
    elif name.endswith(".pt"):
        if not Path(name).is_file():
            raise ModelReferenceError(f"ultralytics checkpoint {name} not found")
        try:
            model = load_checkpoint(name, device="cpu")[0]
        except Exception as error:
            raise ModelReferenceError(f"ultralytics cannot load {name}: {first_line(error)}") from error
    else:
        raise ModelReferenceError(f"ultralytics:{name}: name a model yaml (yolov8n.yaml) or a checkpoint .pt")
    return prepare_ultralytics(model)


def prepare_ultralytics(model: torch.nn.Module) -> torch.nn.Module:
    """Put an Ultralytics model (DetectionModel, SegmentationModel, PoseModel, OBBModel, ClassificationModel,
    RTDETRDetectionModel: `YOLO(...).model`) in the forward prunefx captures, in place, and return it: what
    `prunefx prune ultralytics:NAME` does to the models it loads. Its head goes to export mode (decoded
    outputs in one tensor, no NMS), the model to float, eval and trainable parameters, and prunefx's resizers
    of YOLO's blocks are registered for the write-back. Raises ModelReferenceError for any other model."""
    module_path = type(model).__module__
    if not module_path.startswith("ultralytics."):
        raise ModelReferenceError(f"{type(model).__name__} is not an Ultralytics model: prepare_ultralytics takes "
                                  "YOLO(...).model")
    if not module_path.startswith("ultralytics.nn."):  # the YOLO/RTDETR wrapper, not its network
        raise ModelReferenceError(f"{type(model).__name__} is Ultralytics' wrapper: pass its network, "
                                  f"{type(model).__name__}(...).model")
    # Ultralytics saves its EMA copy with every parameter frozen: prunefx compresses and trains this model.
    model = model.float().eval().requires_grad_(True)
    from prunefx.interop.ultralytics_blocks import register_resizers
    register_resizers()  # so that prunefx.to_module (prune --module) can write a pruned YOLO back
    if type(model).__name__ == "ClassificationModel":
        for head in model.modules():  # export mode: one tensor of class probabilities, not (probabilities, logits)
            if hasattr(head, "export") and type(head).__name__ == "Classify":
                head.export = True
        return model
    return _export_mode(model, type(model).__name__)


# The model class Ultralytics' YOLO builds for each task a yaml names (its task map): the class carries the task's
# loss, so a module written back keeps training as the task's.
_TASK_CLASSES = {"classify": "ClassificationModel", "detect": "DetectionModel", "segment": "SegmentationModel",
                 "pose": "PoseModel", "obb": "OBBModel"}


def _ultralytics_model_class(name: str) -> type:
    """The class Ultralytics builds for the task of the yaml `name` (yolo11n-seg.yaml: SegmentationModel), or
    RTDETRDetectionModel for an RT-DETR yaml (rtdetr-l.yaml: Ultralytics' own RTDETR class picks it the same
    way, by name)."""
    from ultralytics.nn import tasks

    if "rtdetr" in Path(name).stem:
        return tasks.RTDETRDetectionModel
    return getattr(tasks, _TASK_CLASSES.get(tasks.guess_model_task(name), "DetectionModel"))


def _fresh_anchors(decoder: torch.nn.Module, _inputs) -> None:
    """RT-DETR's decoder caches its anchors by feature shapes; a capture leaves tensors of its own tracing in
    that cache, which the next capture (the write-back captures the dense model again) would read as stale
    shapes. Anchors are made anew every call instead (a handful of small ops)."""
    decoder.shapes = []


def _export_mode(model: torch.nn.Module, name: str) -> torch.nn.Module:
    decoders = [m for m in model.modules() if type(m).__name__ == "RTDETRDecoder"]
    if len(decoders) == 1:  # RT-DETR: one tensor (batch, queries, 4 boxes + class scores), as Ultralytics exports
        decoders[0].export = True
        if not any(hook is _fresh_anchors for hook in decoders[0]._forward_pre_hooks.values()):
            decoders[0].register_forward_pre_hook(_fresh_anchors)
        return model
    heads = [m for m in model.modules() if hasattr(m, "export") and hasattr(m, "stride") and hasattr(m, "reg_max")]
    if len(heads) != 1:
        raise ModelReferenceError(f"{name} has {len(heads)} Detect heads; prunefx takes Ultralytics models with "
                                  "one Detect head (or Segment, Pose, OBB), an RT-DETR decoder, or a Classify head")
    head = heads[0]
    if getattr(head, "end2end", False):
        # YOLOv10 and YOLO26 train a one-to-one branch beside the one-to-many one: the graph decodes the
        # one-to-many branch (no top-k, which prunes like any head); the write-back rebuilds the other from it.
        head.end2end, head.prunefx_end2end = False, True
    head.export, head.format = True, "onnx"
    # Anchors are computed inside the graph for the captured size (dynamic), from Python-number strides: a
    # stride tensor would be read with .item() there, which shape propagation cannot follow.
    head.dynamic = True
    head.stride = [float(s) for s in head.stride]
    return model
