"""remove_channels: structured channel pruning to a MACs, parameter or width target (CPD's "prune").

Combs the graph into channel groups (graph/channels/groups.py), scores every channel (importance.py), chooses
which to drop to meet the target (selection.py), optionally compensates the remaining weights
(compensation.py) and slices them out (removal.py), with every literal that depends on a width. With
`calibration` and no `importance` the default is obs with `compensate`; without, l2. Groups blocked by an
operator without a channel rule are never touched and are listed. Not exact, except on zero-weight channels.
The config in full: passes/removal/config.py, docs/algorithms.md, 'remove_channels', and
docs/reference/passes.md.
"""

from __future__ import annotations

import dataclasses
import logging

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.attributes import delete_unused_tensors
from prunefx.graph.channels.attention_dims import floor_names, head_dim_groups
from prunefx.graph.channels.choices import DATA_CRITERIA
from prunefx.graph.channels.compensation import compensate_removed_inputs
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import channel_importance
from prunefx.graph.channels.kept_channels import with_removal
from prunefx.graph.channels.removal import remove_classes
from prunefx.graph.channels.selection import (
    TARGET_TOLERANCE,
    Selector,
    Target,
    removable_counts,
)
from prunefx.graph.errors import PrunefxError
from prunefx.graph.part_seconds import PartSeconds
from prunefx.graph.placement import module_device
from prunefx.graph.program import current_output_shapes
from prunefx.passes.core import config_checks as checks
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.removal.channels_removed import removal_facts
from prunefx.passes.removal.config import RemoveChannelsConfig
from prunefx.passes.rewrites.sparse_masks import refuse_sparse_weights

log = logging.getLogger(__name__)
_UNITS = {"macs": "MACs", "params": "parameters"}


@shipped_pass
@graph_pass(config=RemoveChannelsConfig, in_place=True, reads=("kept_channels", "sparsity"), writes=("kept_channels",))
def remove_channels(program: Program, /, *, config: dict | None = None) -> Result:
    parsed = RemoveChannelsConfig.parse(config)
    importance, compensate = parsed.resolved()  # the defaults that depend on the data given, settled once
    settings = dataclasses.replace(parsed, importance=importance, compensate=compensate,
                                   heads=parsed.resolved_heads())
    checks.nodes_in("remove_channels", "keep", settings.keep, program)
    refuse_sparse_weights(program, "remove_channels", "removing (and compensating) channels")
    target = Target(*settings.target())
    if settings.compensate or settings.importance in DATA_CRITERIA:  # checked (and read once) up front
        settings.calibration = _calibration(program, settings.calibration)
    # Dead nodes and the parameters only they read (googlenet's aux heads in eval mode) would count
    # before pruning and vanish after it, inflating the reduction: drop them first.
    program.drop_dead_code()
    delete_unused_tensors(program.module)  # also those no node reads at all
    before = count(program)
    if target.kind in ("macs", "params") and not getattr(before, target.kind):
        raise PrunefxError(f"remove_channels: {program.name} has no {_UNITS[target.kind]} to cut (no layer with "
                           "weights that channels run through)")
    parts = PartSeconds(module_device(program.module))
    with parts.part("channel groups"):
        combing = find_channel_groups(program.module, keep=set(settings.keep))
    # obs and compensate read the same layer Hessians of the dense network: gathered once, for both
    hessians: dict | None = {} if settings.compensate and settings.importance == "obs" else None
    widths = {"round_to": int(settings.round_to), "max_ratio": float(settings.max_ratio), "ranking": settings.ranking,
              "floors": _floors(program, combing, settings.min_widths, settings.heads)}
    with parts.part("scoring"):
        importance = _importance(program, combing, settings, hessians, widths)
    with parts.part("choice"):
        selector = Selector(program.module, combing, importance.scores, **widths,
                            comparable=getattr(importance, "comparable", False), layer_time=settings.latency_table)
        plan = selector.plan(target)
    if not plan.target_met and settings.strict:
        raise PrunefxError(_unreachable(target, plan, combing))
    removed = {int(c) for gone in plan.removed for c in gone}
    with parts.part("compensation"):
        compensation = (_compensate(program, combing, removed, settings, hessians)
                        if removed and settings.compensate else None)
    hessians = None  # released before slicing
    with parts.part("slicing"):
        if removed:
            sliced = remove_classes(program.module, combing.analysis, removed)
            program.analysis.kept_channels = with_removal(program.analysis.kept_channels, sliced)
            program.recompile()
            _check_outputs_kept(program)
    after = count(program)
    compensated = (compensation or {"compensated": [], "skipped": []}) if settings.compensate else None
    seconds = {**parts.seconds, **{f"scoring: {part}": value  # a callable's scores have no parts
                                   for part, value in getattr(importance, "seconds", {}).items()}}
    facts = removal_facts(settings, target, importance, combing, plan, before, after, compensated, seconds)
    log.info("remove_channels: %d channel classes removed, %.3f of the MACs kept", len(removed),
             after.macs / max(before.macs, 1))
    return Result(program, modified=bool(removed), stats=facts.as_stats(), facts=facts)


def _check_outputs_kept(program: Program) -> None:
    """Channel removal never changes what the model returns: outputs are fixed by the analysis, and this
    guard makes a rule that let geometry through fail loudly instead of returning a different model."""
    shapes = current_output_shapes(program.module)
    if shapes != list(program.output_shapes):
        raise PrunefxError(f"remove_channels changed the output shapes of {program.name} from "
                           f"{list(program.output_shapes)} to {shapes}; this is a bug in a channel rule, "
                           "please report it (pass keep=[...] for the nodes involved meanwhile)")


def _importance(program: Program, combing, config: RemoveChannelsConfig, hessians: dict | None, widths: dict):
    """The importance scores; `widths`: the Selector's width options, whose smallest widths tell the fast
    obs elimination where to stop."""
    criterion = config.importance
    if callable(criterion):  # scores gathered elsewhere, e.g. Fisher accumulated while training
        return criterion(program.module, combing)
    calibration = config.calibration if criterion in DATA_CRITERIA else None  # checked up front
    options = {"calibration": calibration, "seed": int(config.seed)}
    if criterion != "obs":
        return channel_importance(program.module, combing, criterion, **options)
    with program.evaluating():  # the activations the deployed network sees, as for compensate
        return channel_importance(program.module, combing, criterion, damping=float(config.damping),
                                  hessians=hessians, obs_steps=config.obs_steps,
                                  removable=removable_counts(combing, **widths), progress=config.progress,
                                  **options)


def _compensate(program: Program, combing, removed: set[int], config: RemoveChannelsConfig,
                hessians: dict | None) -> dict:
    with program.evaluating():
        return compensate_removed_inputs(program.module, combing.analysis, removed, config.calibration,
                                         damping=float(config.damping), hessians=hessians, progress=config.progress)


def _floors(program: Program, combing, min_widths: dict | None, heads: str) -> list[int] | None:
    """Each group's smallest width: the largest `min_widths` entry among its names (a plain 'tensor:dim'
    holds every factor of a head grid; 'tensor:dim:heads' or ':head_dim' one of them), and with whole heads,
    the full width of every attention head-dim group."""
    floors = [1] * len(combing.groups)
    head_dims = head_dim_groups(program.module, combing) if min_widths or heads == "whole" else []
    if min_widths:
        names = floor_names(program.module, combing, head_dims)
        plains = [[f"{tensor}:{dim}" for tensor, dim in group.members] for group in combing.groups]
        _check_floor_names(program, min_widths, {name for found in names + plains for name in found})
        for index in range(len(combing.groups)):
            floors[index] = max((min_widths.get(name, 1) for name in names[index] + plains[index]), default=1)
    if heads == "whole":
        for index in head_dims:
            floors[index] = combing.groups[index].size
    return floors if any(floor > 1 for floor in floors) else None


def _check_floor_names(program: Program, min_widths: dict, grouped: set[str]) -> None:
    """Every `min_widths` name is a dim of one of the model's tensors ('tensor:dim'; a group's names add the head
    grid's ':heads' and ':head_dim'): a typo would floor nothing and say nothing. A dim no group prunes is named
    rightly and floors nothing."""
    tensors = [*program.module.named_parameters(), *program.module.named_buffers()]
    plain = {f"{name}:{dim}" for name, tensor in tensors for dim in range(tensor.dim())}
    # a head grid's factor stays a valid name once its heads are down to one (no grid any more): prune_while_training
    # hands every cut the floors it named on the dense model
    known = grouped | plain | {f"{name}:{factor}" for name in plain for factor in ("heads", "head_dim")}
    checks.names_in("remove_channels", "min_widths", min_widths, known, what="a 'tensor:dim' of this model",
                    where=" (a parameter's or buffer's name and a dim, e.g. 'conv1.weight:0')")


def _calibration(program: Program, batches) -> list:
    """The calibration input batches (the example inputs when none are given); they must match the
    captured input shapes, since the graph is static. An explicitly empty list is an error."""
    if batches is None:
        return [program.example_inputs]
    return calibration_inputs(program.example_inputs, batches, what="calibration")


def _unreachable(target: Target, plan, combing) -> str:
    blockers = sorted({op for b in combing.blocked for op in b.operators})
    hint = f"; groups blocked by {', '.join(blockers)}" if blockers else ""
    return (f"cannot reach {target.kind}={target.fraction:g} within {TARGET_TOLERANCE:.0%}: the closest plan keeps "
            f"{plan.achieved:.3f} ({len(combing.groups)} prunable groups{hint}); raise max_ratio (--max-ratio), lower "
            f"round_to (--round-to), or accept it with strict=False (Python)")
