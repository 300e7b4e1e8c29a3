"""remove_channels: structured channel pruning to a MACs, parameter or width target (CPD's "prune").

Combs the graph into channel groups (graph/channels/groups.py), scores every channel (importance.py), chooses
which to drop to meet the target (selection.py), optionally compensates the remaining weights
(compensation.py) and slices them out (removal.py), with every literal that depends on a width. With
`calibration` and no `importance` the default is obs with `compensate`; without, l2. Groups blocked by an
operator without a channel rule are never touched and are listed. Not exact, except on zero-weight channels.
The config in full: see docs/algorithms.md, 'remove_channels', and docs/reference/passes.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.attributes import delete_unused_tensors
from prunefx.graph.channels.attention_dims import floor_names, head_dim_groups
from prunefx.graph.channels.compensation import compensate_removed_inputs
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.importance import CRITERIA, DATA_CRITERIA, channel_importance
from prunefx.graph.channels.kept_channels import with_removal
from prunefx.graph.channels.obs_elimination import STEPS
from prunefx.graph.channels.removal import remove_classes
from prunefx.graph.channels.selection import (
    RANKINGS,
    TARGET_KINDS,
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
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.removal.channels_removed import removal_facts
from prunefx.passes.rewrites.sparse_masks import refuse_sparse_weights

log = logging.getLogger(__name__)

FRACTION = "a fraction in (0, 1]"
HEADS = ("whole", "dims")


@dataclass
class RemoveChannelsConfig(PassConfig):
    owner: ClassVar[str] = "remove_channels"

    macs: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the MACs to keep, e.g. 0.5")
    params: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the parameters to keep")
    channels: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True,
                                help="fraction of the prunable channels to keep")
    layer_time: float | None = option(describe=FRACTION, low=0.0, high=1.0, low_open=True, cli=False,
                                      help="fraction of the latency table's time of the timed layers to keep")
    latency_table: Callable | None = option(cli=False, help="(layer, in_channels, out_channels) -> ms: the "
                                                            "per-layer times that price a layer_time target; with "
                                                            "another target, channels still go by importance lost "
                                                            "per millisecond saved (global ranking)")
    importance: str | Callable | None = option(
        help="channel importance; default: obs (second order) with compensation when calibration data is "
             "given, l2 without", choices=CRITERIA)
    calibration: Any = option(source="calibration", help="input batches for data-driven importance and compensation")
    ranking: str = option("global", help="global: rank channels across groups; local: the same fraction of every "
                                         "group; uniform: local with head counts kept whole (every width the same "
                                         "fraction: what a Hugging Face config holds)", choices=RANKINGS)
    round_to: int = option(8, low=1, help="keep every width a multiple of N (8: FP16 tensor cores; 16 for ONNX Runtime on "
                                   "AVX-512 CPUs)")
    max_ratio: float = option(0.8, low=0.0, high=1.0, high_open=True, help="largest fraction of one group removed")
    heads: str | None = option(help="attention: 'whole' heads go and head dims stay (fused kernels' widths, the dense "
                                    "softmax scale); 'dims' lets head dims go too; default whole, dims with "
                                    "ranking uniform", choices=HEADS)
    min_widths: dict | None = option(help="{'tensor:dim': width}: no group with such a member keeps fewer; "
                                           "'tensor:dim:heads' or ':head_dim' names one factor of a head grid",
                                      cli=False)
    keep: list[str] = option([], help="graph node whose channels must stay (see `prunefx inspect`)")
    seed: int = option(0, help="seed of the random criterion", cli=False)
    strict: bool = option(True, help="fail when the target cannot be met within 3 %", cli=False)
    compensate: bool | None = option(
        help="update the remaining weights of every layer that loses inputs so that its output on the "
             "calibration data changes least; default: on with the default importance and calibration data")
    damping: float = option(0.01, low=0.0, help="ridge term of compensation and obs, a fraction of the mean Hessian diagonal")
    obs_steps: str = option("fast", choices=STEPS, cli=False,
                            help="obs elimination: fast (the exact steps, stopped where no plan removes more of a "
                                 "group: the same choice) or exact (every group eliminated to its last channel)")
    progress: bool | None = option(help="progress bars of the obs scoring and the compensation (default: on a "
                                        "terminal)", cli=False)

    def check(self) -> None:
        self.check_target()
        if self.heads == "whole" and self.ranking == "uniform":
            raise checks.ConfigError(f"{self.owner}: ranking uniform keeps head counts and narrows every head, so "
                                     "it needs heads='dims' (or leave heads unset)")
        if self.min_widths is not None and not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                   for w in self.min_widths.values()):
            raise checks.ConfigError(f"{self.owner}: min_widths must map 'tensor:dim' names to widths >= 1")

    def check_target(self) -> None:
        _target(self)
        if self.layer_time is not None and self.latency_table is None:
            raise checks.ConfigError(f"{self.owner}: a layer_time target needs the latency_table that prices it")
        if self.latency_table is not None and self.layer_time is None and self.ranking != "global":
            raise checks.ConfigError(f"{self.owner}: a latency_table ranks channels across groups by importance "
                                     f"per millisecond saved (ranking global); with ranking {self.ranking} and a "
                                     "target other than layer_time it would go unused")

    def reads(self, key: str) -> bool:
        if key != "calibration":
            return True
        return self.importance is None or self.importance in DATA_CRITERIA or bool(self.compensate)

    def resolved(self) -> tuple[str | Callable, bool]:
        """(importance, compensate) after the defaults that depend on the data given: with calibration
        data, second-order selection with compensation (the best one-shot path on our benchmarks);
        without, l2 magnitudes."""
        with_data = self.calibration is not None
        importance = self.importance if self.importance is not None else ("obs" if with_data else "l2")
        compensate = self.compensate if self.compensate is not None else (self.importance is None and with_data)
        return importance, compensate

    def resolved_heads(self) -> str:
        """'whole' or 'dims': the `heads` given, else whole, except under uniform ranking (module docstring)."""
        return self.heads or ("dims" if self.ranking == "uniform" else "whole")


@shipped_pass
@graph_pass(config=RemoveChannelsConfig, in_place=True, reads=("kept_channels", "sparsity"), writes=("kept_channels",))
def remove_channels(program: Program, /, *, config: dict | None = None) -> Result:
    parsed = RemoveChannelsConfig.parse(config)
    importance, compensate = parsed.resolved()  # the defaults that depend on the data given, settled once
    settings = dataclasses.replace(parsed, importance=importance, compensate=compensate,
                                   heads=parsed.resolved_heads())
    checks.nodes_in("remove_channels", "keep", settings.keep, program)
    refuse_sparse_weights(program, "remove_channels", "removing (and compensating) channels")
    target = _target(settings)
    if settings.compensate or settings.importance in DATA_CRITERIA:  # checked (and read once) up front
        settings.calibration = _calibration(program, settings.calibration)
    # Dead nodes and the parameters only they read (googlenet's aux heads in eval mode) would count
    # before pruning and vanish after it, inflating the reduction: drop them first.
    program.drop_dead_code()
    delete_unused_tensors(program.module)  # also those no node reads at all
    before = count(program)
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
        for index, group in enumerate(combing.groups):
            plain = [f"{tensor}:{dim}" for tensor, dim in group.members]
            floors[index] = max((min_widths.get(name, 1) for name in names[index] + plain), default=1)
    if heads == "whole":
        for index in head_dims:
            floors[index] = combing.groups[index].size
    return floors if any(floor > 1 for floor in floors) else None


def _target(config: RemoveChannelsConfig) -> Target:
    given = [kind for kind in TARGET_KINDS if getattr(config, kind) is not None]
    if len(given) != 1:
        raise PrunefxError(f"remove_channels needs exactly one target among {', '.join(TARGET_KINDS)} "
                           f"(got {', '.join(given) or 'none'})")
    value = getattr(config, given[0])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise checks.ConfigError(f"remove_channels: target {given[0]} must be a fraction in (0, 1], not {value!r}")
    return Target(given[0], float(value))


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
            f"{plan.achieved:.3f} ({len(combing.groups)} prunable groups{hint}); raise max_ratio, lower round_to, "
            f"or pass strict=False to accept it")
