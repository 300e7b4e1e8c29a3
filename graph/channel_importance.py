"""Channel importance: one score per channel of every group (higher = more important to keep).

Scores are computed per *class* (one removable channel, see channel_analysis.py) by summing over
every parameter slice that class owns, so a channel of a group is judged by all its members at once
(the conv producing it, its batch norm, the layers consuming it):
- `l1`: sum of |w| over the channel's slices; `l2`: square root of the sum of w^2;
- `bn`: |gamma| of the batch norms in the group (groups without a batch norm fall back to `l2`,
  and the number of such groups is reported);
- `taylor`: first-order Taylor, |sum_k w_k dL/dw_k| over the channel's weights, gradients summed
  over the calibration batches (the derivative of the loss with respect to a gate on the channel);
- `fisher`: CPD's score, sum over batches of (sum_k w_k dL/dw_k)^2 divided by the number of live
  output activations of the layer that uses the weight (batch x spatial x channels);
- `random`: uniform random scores (a baseline).
A grid factor (an attention head, a channel flattened into a linear layer) is scored by everything
it controls. The gradient criteria need calibration batches; without labels, the loss is the
cross-entropy of the model against its own predictions (argmax over dim 1 of every output with at
least two dims), so the score measures how much removing a channel changes what the model predicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunefx.graph.channel_groups import Combing
from prunefx.graph.channel_removal import expand_mask
from prunefx.graph.errors import PrunefxError

aten = torch.ops.aten
CRITERIA = ("l1", "l2", "bn", "taylor", "fisher", "random")
GRADIENT_CRITERIA = ("taylor", "fisher")
_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


@dataclass
class Importance:
    scores: list[np.ndarray]        # one array per group, aligned with group.classes
    criterion: str
    fallback_groups: int = 0        # groups scored by `l2` because the criterion had nothing to read


def channel_importance(module: torch.fx.GraphModule, combing: Combing, criterion: str, *,
                       calibration: Iterable[Sequence[torch.Tensor]] | None = None, seed: int = 0) -> Importance:
    if criterion not in CRITERIA:
        raise PrunefxError(f"unknown importance criterion '{criterion}' (known: {', '.join(CRITERIA)})")
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return Importance([rng.random(g.size) for g in combing.groups], criterion)
    if criterion in GRADIENT_CRITERIA:
        batches = list(calibration or ())
        if not batches:
            raise PrunefxError(f"importance '{criterion}' needs calibration batches (it reads gradients)")
        per_class = _gradient_scores(module, combing, criterion, batches)
    else:
        per_class = _magnitude_scores(module, combing, criterion)
    scores, fallback = [], 0
    l2 = None
    factor_classes = _factor_classes(combing.analysis)
    for group in combing.groups:
        group_scores = _group_scores(combing, group.classes, per_class, square_root=criterion == "l2",
                                     factor_classes=factor_classes)
        if criterion == "bn" and not group_scores.any():
            l2 = _magnitude_scores(module, combing, "l2") if l2 is None else l2
            group_scores = _group_scores(combing, group.classes, l2, square_root=True,
                                         factor_classes=factor_classes)
            fallback += 1
        scores.append(group_scores)
    return Importance(scores, criterion, fallback)


# --- per-class accumulation ----------------------------------------------------------------------
def _parameter_members(module: torch.fx.GraphModule, combing: Combing):
    """(member, parameter) for every parameter dim that carries labels; buffers carry no importance."""
    parameters = dict(module.named_parameters())
    for member in combing.analysis.space.members:
        if member.target in parameters:
            yield member, parameters[member.target]


def _per_index(values: torch.Tensor, dim: int) -> np.ndarray:
    """Sum of `values` over every dim but `dim`."""
    other = [d for d in range(values.dim()) if d != dim]
    summed = values.sum(dim=other) if other else values
    return summed.detach().double().cpu().numpy()


def _magnitude_scores(module, combing: Combing, criterion: str) -> np.ndarray:
    classes = combing.analysis.classes
    per_class = np.zeros(int(classes.max()) + 1)
    batch_norm_weights = _batch_norm_weights(module) if criterion == "bn" else set()
    for member, parameter in _parameter_members(module, combing):
        if criterion == "bn":
            if member.target not in batch_norm_weights:
                continue
            values = parameter.abs()
        else:
            values = parameter.abs() if criterion == "l1" else parameter.square()
        np.add.at(per_class, classes[member.labels], _per_index(values, member.dim))
    return per_class


def _batch_norm_weights(module: torch.fx.GraphModule) -> set[str]:
    return {node.args[1].target for node in module.graph.nodes
            if node.op == "call_function" and node.target in _BATCH_NORMS
            and isinstance(node.args[1], torch.fx.Node) and node.args[1].op == "get_attr"}


def _gradient_scores(module, combing: Combing, criterion: str, batches) -> np.ndarray:
    classes = combing.analysis.classes
    per_class = np.zeros(int(classes.max()) + 1)
    members = list(_parameter_members(module, combing))
    activations = _live_activations(module)
    saved = {name: p.requires_grad for name, p in module.named_parameters()}
    for p in module.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        for batch in batches:
            _pseudo_label_loss(module(*batch)).backward()
            if criterion == "fisher":
                for member, parameter in members:
                    if parameter.grad is not None:
                        gate = _per_index(parameter * parameter.grad, member.dim)
                        np.add.at(per_class, classes[member.labels], gate**2 / activations.get(member.target, 1))
                for parameter in module.parameters():
                    parameter.grad = None
        if criterion == "taylor":
            for member, parameter in members:
                if parameter.grad is not None:
                    gate = _per_index(parameter * parameter.grad, member.dim)
                    np.add.at(per_class, classes[member.labels], np.abs(gate))
    finally:
        for name, p in module.named_parameters():
            p.grad = None
            p.requires_grad_(saved[name])
    return per_class


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
def _factor_classes(analysis) -> set[int]:
    return {int(c) for grid in analysis.space.grids for f in grid.factors for c in analysis.classes[f]}


def _group_scores(combing: Combing, group_classes: np.ndarray, per_class: np.ndarray, *,
                  square_root: bool, factor_classes: set[int]) -> np.ndarray:
    """A class's score plus the scores of every class it controls through a grid (heads)."""
    analysis = combing.analysis
    scores = np.empty(group_classes.size)
    for index, cls in enumerate(group_classes.tolist()):
        if cls in factor_classes:
            mask = np.zeros(per_class.size, dtype=bool)
            mask[cls] = True
            scores[index] = per_class[expand_mask(analysis, mask)].sum()
        else:
            scores[index] = per_class[cls]
    return np.sqrt(scores) if square_root else scores
