"""Prune the exportable part of a model whose whole forward does not export (detectors).

`prune_part` captures the part (e.g. a torchvision detector's backbone) on the tensors it receives, rewrites
it, and puts it back as a `GraphPart`; `to_ultralytics` wraps a pruned YOLO Program for Ultralytics' own
`predict`. Nothing here imports ultralytics. The steps, the static-shape caveat and why the YOLO graph is
wrapped: see docs/algorithms.md, 'Pruning the part that exports'.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from prunefx.graph import CaptureError, Program, PrunefxError, capture
from prunefx.graph.errors import first_line
from prunefx.graph.model_state import left_as_found, random_state_kept
from prunefx.passes.core.pipeline import Pipeline, PipelineResult


class PartError(PrunefxError):
    """A part of a model could not be found, captured or put back."""


# --- finding and capturing a part -------------------------------------------------------------------

def _as_args(example_inputs) -> tuple:
    # A tuple holds the positional arguments; anything else (a tensor, the list of images a torchvision
    # detector takes) is the one argument.
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _get_part(model: torch.nn.Module, part: str) -> torch.nn.Module:
    if not isinstance(part, str) or not part:  # get_submodule("") is the model itself, which no part replaces
        raise PartError(f"a part is the dotted name of a submodule ('head', 'model.22'), not {part!r}: to prune "
                        "the whole model, capture it with prunefx.capture")
    try:
        return model.get_submodule(part)
    except AttributeError:
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise PartError(f"{type(model).__name__} has no submodule '{part}' (its children: {children})") from None


def _record_calls(model: torch.nn.Module, example_inputs, parts: Sequence[str]) -> dict[str, list]:
    """Run `model` once on `example_inputs`; return, per part, the (args, kwargs) of every call it got. The model
    is left as found: a training model's batch-norm statistics, what its forward sets, torch's random state, and
    the inputs, which it is given copies of (a forward may write into its input)."""
    calls: dict[str, list] = {part: [] for part in parts}
    handles = []
    try:
        with torch.no_grad(), left_as_found(model), random_state_kept(model.parameters()):
            # added inside: what the user's hooks keep is put back on the way out, what these record is not
            handles = [_get_part(model, part).register_forward_pre_hook(
                lambda _module, args, kwargs, part=part: calls[part].append((args, kwargs)), with_kwargs=True)
                for part in parts]
            model(*pytree.tree_map_only(torch.Tensor, torch.clone, _as_args(example_inputs)))
    except Exception as error:
        raise PartError(f"{type(model).__name__} does not run on the example inputs: {first_line(error)}") from error
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _tensor_inputs(part: str, calls: list) -> tuple[torch.Tensor, ...]:
    """The part's inputs, when it was called exactly once with positional tensors only."""
    if len(calls) != 1:
        raise PartError(f"part '{part}' ran {len(calls)} times in one forward pass; prunefx captures a part "
                        "that runs exactly once")
    args, kwargs = calls[0]
    if kwargs or not args or not all(isinstance(arg, torch.Tensor) for arg in args):
        kinds = ", ".join([type(arg).__name__ for arg in args] + [f"{key}=" for key in kwargs]) or "nothing"
        raise PartError(f"part '{part}' is called with ({kinds}); prunefx captures a part called with "
                        "positional tensors only: name a part such as the backbone")
    return tuple(arg.detach().clone() for arg in args)


def find_part(model: torch.nn.Module, example_inputs) -> str:
    """The name of the largest child of `model` (by parameters) that runs once on tensors and captures."""
    return _find(model, example_inputs)[0]


def _find(model: torch.nn.Module, example_inputs) -> tuple[str, Program]:
    children = sorted(((sum(p.numel() for p in child.parameters()), name)
                       for name, child in model.named_children()), reverse=True)
    children = [name for size, name in children if size > 0]
    calls = _record_calls(model, example_inputs, children)
    reasons = []
    for name in children:
        try:
            return name, _capture(model, name, _tensor_inputs(name, calls[name]))
        except PartError as error:
            reasons.append(str(error))
    raise PartError(f"no child of {type(model).__name__} can be captured: " + "; ".join(reasons))


def _capture(model: torch.nn.Module, part: str, inputs: tuple[torch.Tensor, ...]) -> Program:
    module = _get_part(model, part)
    try:
        program = capture(module, inputs, name=f"{type(model).__name__}.{part}")
    except CaptureError as error:
        raise PartError(f"part '{part}' does not export: {error}") from error
    return program.eval() if not module.training else program


def capture_part(model: torch.nn.Module, example_inputs, part: str | None = None) -> Program:
    """Capture the submodule `part` (a dotted path such as "backbone"; found by `find_part` when None)
    on the inputs it receives when `model` runs on `example_inputs` (a tuple of positional arguments,
    or one argument). The Program's parameter names are the part's own (state_dict keys)."""
    part = part if part is not None else find_part(model, example_inputs)
    _get_part(model, part)  # a wrong name fails before the model runs
    calls = _record_calls(model, example_inputs, [part])
    return _capture(model, part, _tensor_inputs(part, calls[part]))


def part_from_reference(reference: str, part: str | None, *, weights: str | None = None,
                        input_shape: tuple[int, ...] | None = None) -> Program:
    """The CLI's `--part`: capture `part` of the model that `reference` names (prunefx.models), run on
    random images of `input_shape` (NxCxHxW; a list of N CxHxW images for torchvision's detectors, which
    take lists, a batch tensor otherwise)."""
    from prunefx.models import build_model, load_weights  # models imports timm/torchvision: only when used

    square = input_shape is not None and len(input_shape) == 4 and input_shape[-1] == input_shape[-2]
    spec = build_model(reference, image_size=input_shape[-1] if square else None)
    if spec.module is None:
        raise PartError(f"{reference} is a saved program, already captured whole: --part needs a model")
    if weights:
        load_weights(spec.module, weights)
    shape = input_shape or spec.default_input_shape
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    example = list(images) if _takes_image_list(spec.module) else images
    model = spec.module.eval()
    part, program = _find(model, example) if part is None else (part, capture_part(model, example, part))
    program.name = f"{spec.name}.{part}"
    return program


def _takes_image_list(model: torch.nn.Module) -> bool:
    # torchvision's detectors batch (and resize) a list of images in their GeneralizedRCNNTransform.
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


# --- putting a rewritten part back ------------------------------------------------------------------

class GraphPart(torch.nn.Module):
    """A submodule replaced by a rewritten Program: calls its GraphModule, at its captured shapes.

    `train()` / `eval()` (also when called on the enclosing model) set the batch-norm and dropout
    flags inside the graph, which the GraphModule's own `training` attribute does not reach."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        self.graph_module = program.module  # registered: parameters(), to() and state_dict() reach it

    def forward(self, *inputs):
        self._check_shapes(inputs)
        return self.graph_module(*inputs)

    def _check_shapes(self, inputs) -> None:
        want = [tuple(x.shape) for x in self.program.example_inputs]
        got = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
        if got != want:
            shown = ", ".join("x".join(map(str, shape)) for shape in want)
            raise PartError(f"pruned part '{self.program.name}' was captured for input {shown} and got {got}: "
                            "its graph has static shapes (feed that size, e.g. build the detector with a "
                            "fixed image size, or capture again at this one)")

    def train(self, mode: bool = True) -> GraphPart:
        # Not nn.Module.train: it would recurse into the GraphModule, which refuses train() once it comes
        # from a loaded .pt2. Program.train sets the graph's flags and every submodule's `training`.
        self.training = mode
        self.program.train(mode)
        return self


def replace_part(model: torch.nn.Module, part: str, program: Program) -> torch.nn.Module:
    """A deep copy of `model` in which the submodule `part` is a copy of `program` (a GraphPart); `model` and
    `program` are unchanged."""
    return _with_part(model, part, program.clone())


def _with_part(model: torch.nn.Module, part: str, program: Program, *, own_modes: bool = False) -> torch.nn.Module:
    """replace_part with `program` itself in the copy (prune_part's, whose result shares it). The part takes
    the model's mode; with `own_modes` (a program captured from this very part) each layer keeps its own, so a
    batch norm frozen in a training model stays frozen."""
    original = _get_part(model, part)
    model = copy.deepcopy(model)
    parent_name, _, leaf = part.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    replacement = GraphPart(program)
    if own_modes:
        replacement.training = original.training
    else:
        replacement.train(model.training)
    setattr(parent, leaf, replacement)
    return model


@dataclass
class PartPruning:
    """What `prune_part` returns: the whole model with its part rewritten, and how."""

    model: torch.nn.Module      # a copy of the user's model, the part replaced by a GraphPart
    part: str                   # the submodule path that was rewritten
    dense: Program              # the part as captured, before the passes
    result: PipelineResult      # the passes' result (statistics by pass: result.stats())

    @property
    def program(self) -> Program:
        """The rewritten part: export it to ONNX, save it, measure it."""
        return self.result.program


def prune_part(model: torch.nn.Module, example_inputs, pipeline, *, part: str | None = None) -> PartPruning:
    """Capture `part` of `model` (see `capture_part`), run `pipeline` (a Pipeline, or its steps) on it,
    and return a copy of `model` with the rewritten part in place. The user's model is not changed."""
    if not isinstance(model, torch.nn.Module):
        raise PartError(f"prune_part takes the detector's torch.nn.Module, not {type(model).__name__}")
    pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
    part, dense = _find(model, example_inputs) if part is None else (part, capture_part(model, example_inputs, part))
    result = pipeline.run(dense)
    return PartPruning(_with_part(model, part, result.program, own_modes=True), part, dense, result)


# --- Ultralytics ------------------------------------------------------------------------------------

_SOFTMAX = {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default, torch.ops.aten.log_softmax.int,
            torch.ops.aten._log_softmax.default}


def softmax_nodes(program: Program) -> list[str]:
    """Names of the graph's softmax nodes, for remove_channels' `keep`.

    The channel rules let a softmax's normalised dim be pruned (as inexact). In YOLO's head that dim
    holds the 16 bins of the distribution-focal-loss box regression, integrated by a fixed conv: cutting
    bins changes what every box means, and Ultralytics' own code (reg_max) expects all of them. Keeping
    every softmax input keeps those bins, found from the graph, without a per-model list."""
    return [node.name for node in program.graph.nodes if node.op == "call_function" and node.target in _SOFTMAX]


class UltralyticsGraph(GraphPart):
    """A pruned Ultralytics detection Program that Ultralytics' `predict` runs as a (non-BaseModel) module.

    Ultralytics' PyTorch backend reads `stride`, `names` and `yaml` and calls `fuse()`; the graph is
    already what it runs in export mode (decoded boxes and class scores, no NMS), which its NMS takes.
    Predict at the captured size with letterboxing to a square (`imgsz=SIZE, rect=False`)."""

    def __init__(self, program: Program, detection_model: torch.nn.Module):
        super().__init__(program)
        self.stride = detection_model.stride.detach().clone()
        self.names = dict(detection_model.names)
        self.yaml = dict(getattr(detection_model, "yaml", {}) or {})
        self.task = "detect"

    def forward(self, image, *_args, **_kwargs):  # augment/embed/visualize: not offered by a fixed graph
        return super().forward(image)

    def fuse(self, *_args, **_kwargs) -> UltralyticsGraph:  # batch norms are folded, or foldable, in the graph
        return self


def to_ultralytics(program: Program, detection_model: torch.nn.Module) -> UltralyticsGraph:
    """Wrap a pruned Program of `detection_model` (an Ultralytics DetectionModel) for Ultralytics:
    `yolo = YOLO("yolov8n.yaml"); yolo.model = to_ultralytics(program, yolo.model)`."""
    for attribute in ("stride", "names"):
        if not hasattr(detection_model, attribute):
            raise PartError(f"{type(detection_model).__name__} has no '{attribute}': pass the Ultralytics "
                            "DetectionModel the Program was captured from")
    return UltralyticsGraph(program, detection_model)

