"""Channel importance: one score per channel of every group (higher = more important to keep).

Scores are computed per *class* (one removable channel) by summing over every parameter slice it owns, so a
channel is judged by all its group's members at once. Criteria: `l1`, `l2`, `bn`, `taylor`, `fisher`, `obs`
(graph/channels/saliency.py, the one to pair with `compensate`) and `random`; `taylor`, `fisher` and `obs`
need calibration batches (DATA_CRITERIA). Each criterion's formula, its fallbacks and the loss the gradient
criteria use without labels: see docs/algorithms.md, 'Channel importance'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunefx.graph.channels.choices import CRITERIA, DATA_CRITERIA, GRADIENT_CRITERIA
from prunefx.graph.channels.factor_slices import FactorSlices
from prunefx.graph.channels.groups import Combing
from prunefx.graph.channels.saliency import obs_saliency
from prunefx.graph.errors import PrunefxError
from prunefx.graph.grad_mode import gradients_on
from prunefx.graph.model_state import random_state_kept, values_kept
from prunefx.graph.placement import module_device

aten = torch.ops.aten
_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


@dataclass
class Importance:
    scores: list[np.ndarray]        # one array per group, aligned with group.classes
    criterion: str
    fallback_groups: int = 0        # groups scored by `l2` because the criterion had nothing to read
    fallback_channels: int = 0      # the channels of those groups
    comparable: bool = False        # scores share one scale across groups: global ranking uses them as they are
    seconds: dict[str, float] = field(default_factory=dict)  # where `obs` spent its time (graph/part_seconds.py)
    # `obs`: the layers with fewer calibration rows than columns, scored without compensation (layer, rows, columns)
    uncompensated: list[dict] = field(default_factory=list)


def channel_importance(module: torch.fx.GraphModule, combing: Combing, criterion: str, *,
                       calibration: Iterable[Sequence[torch.Tensor]] | None = None, seed: int = 0,
                       damping: float = 0.01, hessians: dict | None = None, obs_steps: str = "fast",
                       removable: list[int] | None = None, progress: bool | None = None) -> Importance:
    """Scores for `criterion` (module docstring). `obs` only: `damping`, the Hessian cache `hessians`
    shared with compensation, its elimination's `obs_steps` and per-group `removable` counts
    (graph/channels/obs_elimination.eliminate), and a `progress` bar (graph/progress.py)."""
    if criterion not in CRITERIA:
        raise PrunefxError(f"unknown importance criterion '{criterion}' (known: {', '.join(CRITERIA)})")
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return Importance([rng.random(g.size) for g in combing.groups], criterion)
    batches = list(calibration or ()) if criterion in DATA_CRITERIA else []
    if criterion in DATA_CRITERIA and not batches:
        reads = "gradients" if criterion in GRADIENT_CRITERIA else "layer inputs"
        raise PrunefxError(f"importance '{criterion}' needs calibration batches (it reads {reads})")
    if criterion == "obs":
        return _obs_importance(module, combing, batches, damping, hessians, (obs_steps, removable), progress)
    if criterion in GRADIENT_CRITERIA:
        per_class = _gradient_scores(module, combing, criterion, batches)
    else:
        per_class = _magnitude_scores(module, combing, criterion)
    importance = group_importance(combing, per_class, criterion)
    if criterion == "bn":
        _fall_back_to_l2(module, combing, importance)
    return importance


def group_importance(combing: Combing, per_class: np.ndarray, criterion: str) -> Importance:
    """Per-class scores gathered into one array per group (heads scored by all they control)."""
    slices = combing.analysis.factor_slices
    scores = [_group_scores(group.classes, per_class, square_root=criterion == "l2", slices=slices)
              for group in combing.groups]
    return Importance(scores, criterion)


def _fall_back_to_l2(module, combing: Combing, importance: Importance) -> None:
    """Groups without a batch norm have no `bn` score: they are scored by `l2`, and counted."""
    _score_by_l2(module, combing, importance, [i for i, scores in enumerate(importance.scores) if not scores.any()])


def _score_by_l2(module, combing: Combing, importance: Importance, groups: list[int]) -> None:
    """Replace the scores of `groups` by their `l2` scores, and count them as fallbacks."""
    if not groups:
        return
    l2 = group_importance(combing, _magnitude_scores(module, combing, "l2"), "l2")
    for index in groups:
        importance.scores[index] = l2.scores[index]
    importance.fallback_groups = len(groups)
    importance.fallback_channels = int(sum(combing.groups[index].size for index in groups))


def _obs_importance(module, combing: Combing, batches, damping: float, hessians: dict | None,
                    elimination: tuple, progress: bool | None) -> Importance:
    """OBS saliency per channel; groups with a channel no compensable layer reads are scored by `l2`."""
    steps, removable = elimination
    saliency = obs_saliency(module, combing, batches, damping=damping, hessians=hessians, steps=steps,
                            removable=removable, progress=progress)
    importance = Importance(saliency.scores, "obs", comparable=True, seconds=saliency.seconds,
                            uncompensated=saliency.uncompensated)
    missing = [index for index, read in enumerate(saliency.read) if not read.all()]
    _score_by_l2(module, combing, importance, missing)
    if missing:
        importance.comparable = False  # l2 and obs scores share no scale: global ranking normalises per group
    return importance


# --- per-class accumulation ----------------------------------------------------------------------
def _parameter_members(module: torch.fx.GraphModule, combing: Combing):
    """(member, parameter) for every parameter dim that carries labels; buffers carry no importance."""
    parameters = dict(module.named_parameters())
    for member in combing.analysis.space.members:
        if member.target in parameters:
            yield member, parameters[member.target]


def _per_index(values: torch.Tensor, dim: int) -> np.ndarray:
    """Sum of `values` over every dim but `dim`."""
    return _per_index_on_device(values, dim).cpu().numpy()


def _per_index_on_device(values: torch.Tensor, dim: int) -> torch.Tensor:
    """`_per_index` as a float64 tensor where `values` are (no copy to the host, so no wait for the device)."""
    values = _full_precision(values.detach())
    other = [d for d in range(values.dim()) if d != dim]
    summed = values.sum(dim=other) if other else values
    return summed.double()


def _full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """A half or bfloat16 tensor in float32: scores squared and summed in 8 bits of mantissa break near-ties by
    rounding, so a half-precision model would keep other channels than the same weights in float32."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _gate_derivative(parameter: torch.Tensor) -> torch.Tensor:
    """w * dL/dw, in full precision."""
    return _full_precision(parameter.detach()) * _full_precision(parameter.grad.detach())


def _magnitude_scores(module, combing: Combing, criterion: str) -> np.ndarray:
    classes = combing.analysis.classes
    per_class = np.zeros(int(classes.max()) + 1)
    batch_norm_weights = _batch_norm_weights(module) if criterion == "bn" else set()
    for member, parameter in _parameter_members(module, combing):
        if criterion == "bn" and member.target not in batch_norm_weights:
            continue
        weights = _full_precision(parameter.detach())
        values = weights.square() if criterion == "l2" else weights.abs()
        np.add.at(per_class, classes[member.labels], _per_index(values, member.dim))
    return per_class


def _batch_norm_weights(module: torch.fx.GraphModule) -> set[str]:
    return {node.args[1].target for node in module.graph.nodes
            if node.op == "call_function" and node.target in _BATCH_NORMS
            and isinstance(node.args[1], torch.fx.Node) and node.args[1].op == "get_attr"}


def _gradient_scores(module, combing: Combing, criterion: str, batches) -> np.ndarray:
    device = module_device(module)
    batches = [tuple(t.to(device) for t in batch) for batch in batches]  # a recipe's loader gives CPU batches
    with gradients_on(f"importance '{criterion}'"), _left_as_found(module):
        if criterion == "fisher":
            fisher = FisherAccumulator(module)
            for batch in batches:
                _pseudo_label_loss(module(*batch)).backward()
                fisher.accumulate()
                for parameter in module.parameters():
                    parameter.grad = None
            return fisher.per_class(combing)
        for batch in batches:  # taylor: |sum over batches of the gate derivative|
            _pseudo_label_loss(module(*batch)).backward()
        per_class = np.zeros(int(combing.analysis.classes.max()) + 1)
        for member, parameter in _parameter_members(module, combing):
            if parameter.grad is not None:
                gate = _per_index(_gate_derivative(parameter), member.dim)
                np.add.at(per_class, combing.analysis.classes[member.labels], np.abs(gate))
        return per_class


@contextlib.contextmanager
def _left_as_found(module: torch.nn.Module) -> Iterator[None]:
    """Gradients on every parameter inside the block. The scoring runs the graph in the mode it is in (a
    training-mode batch norm updates its running statistics, dropout draws random numbers): each parameter's
    requires_grad and gradient, every buffer's value and the random state are put back after it."""
    parameters = [(p, p.requires_grad, p.grad) for p in module.parameters()]
    for p, _, _ in parameters:
        p.requires_grad_(True)
        p.grad = None
    try:
        with values_kept(module.buffers()), random_state_kept(module.parameters()):
            yield
    finally:
        for p, requires_grad, grad in parameters:
            p.requires_grad_(requires_grad)
            p.grad = grad


class FisherAccumulator:
    """CPD's Fisher score, accumulated over backward passes: call `accumulate()` after every backward.

    For every parameter and every dim of it, the per-index sum of w * dL/dw (the derivative of the
    loss with respect to a gate on that index) is squared and divided by the live activations of
    the layer that reads the parameter. Storing it per (parameter, dim) rather than per channel
    class keeps the accumulator independent of a combing: `per_class(combing)` maps it onto the
    classes of whichever analysis the caller holds (the same graph, combed now or later).
    `gradients_from`: the module whose gradients are read, when it is not the graph itself: an eager
    module with the graph's parameter names (the user's own module, trained in their loop).
    """

    def __init__(self, module: torch.fx.GraphModule, *, gradients_from: torch.nn.Module | None = None):
        self.module = module
        self.gradients_from = module if gradients_from is None else gradients_from
        self.activations = _live_activations(module)
        # float64 tensors beside the gradients: accumulating after every step never waits for the device
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.batches = 0

    def accumulate(self, loss_scale: float = 1.0) -> None:
        """Add this step's gradients; a step whose gradients are not all finite (a mixed-precision overflow, which
        the optimizer skips too) adds nothing, decided on the device: no wait for it. `loss_scale`: the factor a
        mixed-precision loss was multiplied by (a GradScaler's scale), which the gradients carry: divided out, so
        that a step after the scaler halved or doubled it counts as much as one before."""
        products = {name: _gate_derivative(parameter) / loss_scale
                    for name, parameter in self.gradients_from.named_parameters() if parameter.grad is not None}
        finite = torch.stack([torch.isfinite(product).all() for product in products.values()]).all() \
            if products else None
        for name, product in products.items():
            scale, kept = self.activations.get(name, 1), finite.to(product.device)
            for dim in range(product.dim()):
                added = _per_index_on_device(product, dim).square() / scale
                added = torch.where(kept, added, torch.zeros_like(added))
                before = self.sums.get((name, dim))
                self.sums[(name, dim)] = added if before is None else before.to(added.device) + added
        self.batches += 1

    def state(self) -> dict:
        """The sums so far as CPU tensors (what a training checkpoint can hold: it is read with weights_only)."""
        return {"batches": self.batches,
                "sums": [(name, dim, sums.cpu()) for (name, dim), sums in self.sums.items()]}

    def load_state(self, state: dict) -> None:
        """Continue from `state` (as `state` gave it): a resumed run scores as the uninterrupted one would."""
        self.batches = int(state["batches"])
        self.sums = {(str(name), int(dim)): sums.double() for name, dim, sums in state["sums"]}

    def per_class(self, combing: Combing) -> np.ndarray:
        if not self.batches:
            raise PrunefxError("no Fisher importance accumulated yet: call accumulate() after a backward pass")
        classes = combing.analysis.classes
        per_class = np.zeros(int(classes.max()) + 1)
        for member, _ in _parameter_members(self.module, combing):
            sums = self.sums.get((member.target, member.dim))
            if sums is not None and sums.numel() == member.labels.size:
                np.add.at(per_class, classes[member.labels], sums.cpu().numpy())
        return per_class

    def importance(self, module: torch.fx.GraphModule, combing: Combing) -> Importance:
        """The accumulated scores as an Importance for `combing` (remove_channels' `importance`)."""
        if module is not self.module:
            raise PrunefxError("the Fisher scores were accumulated on another module than the one being pruned")
        return group_importance(combing, self.per_class(combing), "fisher")


def _pseudo_label_loss(outputs) -> torch.Tensor:
    logits = [t for t in pytree.tree_leaves(outputs)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2 and t.requires_grad]
    if not logits:
        raise PrunefxError("gradient importance needs a floating-point output with a class dim (dim 1)")
    return sum(torch.nn.functional.cross_entropy(t, t.detach().argmax(dim=1)) for t in logits)


def _live_activations(module: torch.fx.GraphModule) -> dict[str, int]:
    """For every parameter, the number of output elements of the first operator that reads it."""
    activations = {}
    for node in module.graph.nodes:
        if node.op != "get_attr":
            continue
        for user in node.users:
            value = user.meta.get("val")
            if isinstance(value, torch.Tensor):
                activations[node.target] = max(int(value.numel()), 1)
                break
    return activations


# --- from classes to groups -----------------------------------------------------------------------
def _group_scores(group_classes: np.ndarray, per_class: np.ndarray, *, square_root: bool,
                  slices: FactorSlices) -> np.ndarray:
    """A class's score plus the scores of every class it controls through a grid (heads)."""
    scores = np.empty(group_classes.size)
    for index, cls in enumerate(group_classes.tolist()):
        scores[index] = per_class[slices.removed_with(cls)].sum() if cls in slices.slices else per_class[cls]
    return np.sqrt(scores) if square_root else scores
