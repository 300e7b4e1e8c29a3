"""linearize_blocks: put chosen blocks in UPDP's pruned form (activations out, layer norms -> batch norms).

Activations become blends raised to identity during training (progressive) or identity at once (abrupt);
layer norms over channels become calibrated batch norms. Blocks are named, or the k least harmful (or a
measured speed-up) are chosen from a damage ranking; merge_blocks then folds them. The rewrite, the choice
of blocks and the config: see docs/algorithms.md, 'linearize_blocks'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from prunefx.graph import Program, count
from prunefx.graph.activations import calibration_inputs
from prunefx.graph.analysis_record import LinearizeRecord
from prunefx.graph.counted import counted
from prunefx.graph.depth.block_damage import block_damage
from prunefx.graph.depth.blocks import Block, find_blocks
from prunefx.graph.depth.linearization import (
    blend_activation,
    new_blend_buffer,
    remove_activation,
    set_blends,
)
from prunefx.graph.depth.norm_replacement import layer_norm_to_batch_norm, why_not_replaceable
from prunefx.passes.core.config_checks import ConfigError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pipeline import run_inner
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.rewrites.linearize_config import RANKINGS, LinearizeBlocksConfig, LinearizeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Linearized:
    """What linearize_blocks hands to its caller (`prunefx depth`): the blocks whose activations it removed."""

    blocks: list[str]


@shipped_pass
@graph_pass(config=LinearizeBlocksConfig, in_place=True, reads=("linearize",), writes=("linearize",))
def linearize_blocks(program: Program, /, *, config: dict | None = None) -> Result:
    settings = LinearizeBlocksConfig.parse(config)
    _check_inputs(settings)
    _check_ramp(program, settings)
    candidates = find_blocks(program.module)
    batches = (calibration_inputs(program.example_inputs, settings.calibration, max_batches=settings.max_batches,
                                  what="linearize_blocks") if settings.calibration is not None else None)
    chosen, damage = _choose(program, candidates, settings, batches)
    stats = {"mode": settings.mode, "candidates": [_summary(block, damage) for block in candidates],
             "chosen": [block.name for block in chosen],
             "not_mergeable": [block.name for block in chosen if not block.affine]}
    if "speedup_missed" in damage:  # every ranked block chosen, the target still not reached
        stats["speedup_missed"] = damage["speedup_missed"]
        log.warning("linearize_blocks: no choice of blocks reached a %.2fx speed-up (best measured %.2fx): all %d "
                    "ranked blocks linearised", settings.speedup, damage["speedup_missed"]["best_measured"],
                    len(chosen))
    new_norms = _replace_layer_norms(program, chosen) if settings.layer_norms == "batch_norm" else []
    stats.update(_linearize(program, chosen, settings.mode, settings.ramp))
    program.recompile()
    stats["layer_norms_replaced"] = len(new_norms)
    norms = new_norms + (_batch_norms_of(program, chosen) if settings.recalibrate else [])
    stats["calibrated"] = bool(norms) and batches is not None
    stats["batch_norms_recalibrated"] = len(norms) if batches is not None else 0
    if norms and batches is not None:
        run_inner(recalibrate_batchnorm, program, {"data": batches, "nodes": norms})
    return Result(program, modified=bool(chosen), stats=stats, facts=Linearized([block.name for block in chosen]))


def _batch_norms_of(program: Program, blocks: list[Block]) -> list[str]:
    """The batch norms inside `blocks`: once an activation before them is gone, their input statistics
    changed, so `recalibrate` re-estimates them (one-shot depth pruning without training)."""
    inside = {name for block in blocks for name in block.nodes}
    return [node.name for node in program.graph.nodes if node.name in inside and node.op == "call_function"
            and node.target is torch.ops.aten.batch_norm.default]


def _check_inputs(config: LinearizeBlocksConfig) -> None:
    """What the pass needs from its caller besides values (data, a measuring function)."""
    if config.speedup is not None and not callable(config.measure):
        raise LinearizeError("linearize_blocks: a 'speedup' target needs 'measure', a callable (before, after) -> "
                             "speed-up (e.g. prunefx.runtime.onnx_speedup())")
    if config.recalibrate and config.calibration is None:
        raise LinearizeError("linearize_blocks: recalibrate needs 'calibration' data")


def _choose(program: Program, candidates: list[Block], config: LinearizeBlocksConfig,
            batches) -> tuple[list[Block], dict]:
    by_name = {block.name: block for block in candidates}
    if config.blocks is not None:
        unknown = [name for name in config.blocks if name not in by_name]
        if unknown:
            raise LinearizeError(f"linearize_blocks: no block named {unknown}; the blocks are: {', '.join(by_name)}")
        return [by_name[name] for name in config.blocks], {}
    ranked, scores = ranked_blocks(program, batches, rank=config.rank, progress=config.progress,
                                   candidates=candidates, max_kernel_growth=config.max_kernel_growth,
                                   layer_norms=config.layer_norms, needed=config.count)
    count = config.count
    if config.speedup is not None:
        # _enough_for_speedup keeps the shortest prefix of the ranking that reaches the target: all of it is chosen
        ranked = _enough_for_speedup(program, ranked, config, scores)
        count = len(ranked)
    assert count is not None  # the config's check: exactly one of blocks, count and speedup
    chosen = set(block.name for block in ranked[:count])
    return [block for block in candidates if block.name in chosen], scores


def _why_not_affine(blocks: list[Block]) -> str:
    """'; 3 cannot merge (REASON)': why blocks stay out, the most common reason named."""
    reasons = [block.reason for block in blocks if not block.affine]
    if not reasons:
        return ""
    common = max(set(reasons), key=reasons.count)
    return f"; {len(reasons)} of {counted(len(blocks), 'block')} cannot merge ({common}{', ...' if len(set(reasons)) > 1 else ''})"


def _saving_nothing(blocks: list[Block], gains: dict[str, int], growth: float) -> str:
    """'; 4 would merge into no fewer MACs (...)': the affine blocks whose merge saves nothing, named."""
    idle = [block.name for block in blocks if block.affine and gains.get(block.name, 0) <= 0]
    if not idle:
        return ""
    return (f"; {len(idle)} would merge into no fewer MACs ({', '.join(idle[:4])}{', ...' if len(idle) > 4 else ''}; "
            f"max_kernel_growth {growth:g} bounds how far a merge may grow a kernel)")


def ranked_blocks(program: Program, batches, *, rank: str = "damage", progress: bool | None = None,
                  candidates: list[Block] | None = None, max_kernel_growth: float = 1.0,
                  layer_norms: str = "batch_norm", needed: int | None = None) -> tuple[list[Block], dict]:
    """The blocks worth linearising (affine once linearised, and their merge saves MACs), least harmful
    on `batches` (input tuples: graph/activations.calibration_inputs) first by `rank`, and {block: {damage, macs_saved}}. Budget searches (passes/depth_to_budget.py) take
    prefixes of this order. `needed`: fewer worth linearising is an error, before any block is scored on data."""
    if batches is None:
        raise LinearizeError("linearize_blocks: choosing blocks by 'count' or 'speedup' needs 'calibration' data "
                             "to score them")
    candidates = find_blocks(program.module) if candidates is None else candidates
    worth, gains = _worth_merging(program, candidates, max_kernel_growth, layer_norms)
    if needed is not None and needed > len(worth):
        raise LinearizeError(f"linearize_blocks: count {needed} but only {len(worth)} blocks become "
                             f"affine once linearised and merge into fewer MACs"
                             f"{': ' + ', '.join(block.name for block in worth) if worth else ''}"
                             f"{_why_not_affine(candidates)}{_saving_nothing(candidates, gains, max_kernel_growth)}")
    damage = block_damage(program, worth, batches, progress=progress)
    order = RANKINGS[rank]
    ranked = sorted(worth, key=lambda block: order(damage[block.name], gains[block.name]))
    scores = {name: {"damage": value} for name, value in damage.items()}
    for name, gain in gains.items():
        scores.setdefault(name, {})["macs_saved"] = gain
    return ranked, scores


def mergeable_blocks(program: Program, max_kernel_growth: float = 1.0,
                     candidates: list[Block] | None = None) -> list[Block]:
    """The blocks (of `candidates`, default all) that become affine once linearised and whose merge saves MACs:
    those `ranked_blocks` ranks."""
    return _worth_merging(program, find_blocks(program.module) if candidates is None else candidates,
                          max_kernel_growth)[0]


def _worth_merging(program: Program, candidates: list[Block], growth: float,
                   layer_norms: str = "batch_norm") -> tuple[list[Block], dict[str, int]]:
    affine = [block for block in candidates if block.affine]
    gains = _merge_gains(program, affine, growth, layer_norms)
    return [block for block in affine if gains[block.name] > 0], gains


def _linearized_and_merged(program: Program, blocks: list[Block], growth: float = 1.0,
                           layer_norms: str = "batch_norm") -> Program:
    """A copy of `program` with `blocks` in their abrupt pruned form, merged with `growth` (what deployment runs,
    layer norms replaced as the pass will replace them)."""
    candidate = program.clone().eval()
    if layer_norms == "batch_norm":
        _replace_layer_norms(candidate, blocks)
    _linearize(candidate, blocks, "abrupt")
    candidate.module.recompile()  # shapes are unchanged: merge_blocks refreshes them when it rewrites
    return merge_blocks(candidate, config={"max_kernel_growth": growth}).program


def _enough_for_speedup(program: Program, ranked: list[Block], config: LinearizeBlocksConfig,
                        scores: dict) -> list[Block]:
    """The shortest prefix of `ranked` whose merged network `measure` finds `speedup` times faster than the
    merged dense one; all of them when none is, and `scores` then holds `speedup_missed` (the best measured)."""
    def merged(blocks):
        return _linearized_and_merged(program, blocks, config.max_kernel_growth, config.layer_norms)

    measure, target = config.measure, config.speedup
    assert callable(measure) and target is not None  # _check_inputs and the config's check
    reference, best = merged([]), 0.0
    for n in range(1, len(ranked) + 1):
        speedup = float(measure(reference, merged(ranked[:n])))
        scores.setdefault(ranked[n - 1].name, {})["measured_speedup_with_previous"] = speedup
        best = max(best, speedup)
        if speedup >= target:
            return ranked[:n]
    scores["speedup_missed"] = {"target": target, "best_measured": best}
    return ranked


def _merge_gains(program: Program, blocks: list[Block], growth: float, layer_norms: str) -> dict[str, int]:
    """{block: MACs that merge_blocks saves once that block alone is linearised}, against merging the
    network as it is (batch-norm folds alone save nothing). Counted, never measured: a cheap filter so
    that `count` never spends a block on a non-linearity whose removal merges nothing (a stem, a head)."""
    merged = _linearized_and_merged(program, [], growth, layer_norms)
    baseline = count(merged).macs
    names = {node.name for node in merged.graph.nodes}
    # Merging the merged network again does only what the block's linearity adds, not every fold of the dense
    # network once per block (a merge keeps the names of the non-linearities it leaves).
    return {block.name: baseline - count(_linearized_and_merged(
                merged if names.issuperset(block.activations + block.layer_norms) else program, [block], growth,
                layer_norms)).macs
            for block in blocks}


def _summary(block: Block, scores: dict) -> dict:
    summary = {"name": block.name, "kind": block.kind, "activations": len(block.activations),
               "layer_norms": len(block.layer_norms), "affine": block.affine}
    if block.reason:
        summary["reason"] = block.reason
    summary.update(scores.get(block.name, {}))
    return summary


def _replace_layer_norms(program: Program, blocks: list[Block]) -> list[str]:
    """The blocks' layer norms that can become batch norms, replaced (checked before the first is: a norm over
    more than the channels stays, and its block is not mergeable, `not_mergeable` in the stats)."""
    if not any(block.layer_norms for block in blocks):
        return []
    nodes = {node.name: node for node in program.graph.nodes}
    replaceable = [name for block in blocks for name in block.layer_norms if why_not_replaceable(nodes[name]) is None]
    return [layer_norm_to_batch_norm(program, nodes[name]).name for name in replaceable]


def _check_ramp(program: Program, settings: LinearizeBlocksConfig) -> None:
    """One schedule raises every blend of a Program: a second progressive call with another ramp would move the
    first call's blends too."""
    record = program.analysis.linearize
    if settings.mode == "progressive" and record is not None and record.blends and record.ramp != settings.ramp:
        raise ConfigError(f"linearize_blocks: the blends already in {program.name} ramp over {record.ramp:g} of the "
                          f"steps; a second progressive call takes the same ramp, not {settings.ramp:g}")


def _linearize(program: Program, blocks: list[Block], mode: str, ramp: float | None = None) -> dict:
    nodes = {node.name: node for node in program.graph.nodes}
    module = program.module
    if mode == "abrupt":
        for block in blocks:
            for name in block.activations:
                remove_activation(module, nodes[name])
        return {"activations_removed": sum(len(block.activations) for block in blocks)}
    if program.analysis.linearize is None:
        program.analysis.linearize = LinearizeRecord()
    record = program.analysis.linearize
    assert ramp is not None  # the config's default ramp reaches every progressive linearisation
    record.ramp = float(ramp)
    for block in blocks:
        buffer = new_blend_buffer(module, block.name)
        record.blends[buffer] = block.name
        for name in block.activations:
            blend_activation(module, nodes[name], buffer)
    return {"activations_blended": sum(len(block.activations) for block in blocks)}


def blend_schedule(program: Program, total_steps: int):
    """An `after_step` hook for passes/training.Trainer raising every pending blend of `program` linearly
    from 0 to exactly 1 over the first `ramp` fraction of `total_steps`; None when nothing is pending."""
    record = program.analysis.linearize
    if record is None or not record.blends:
        return None
    ramp_steps = max(1, round(record.ramp * total_steps))

    def raise_blends(trainer, step: int) -> None:
        blends = trainer.program.analysis.pending_blends
        with torch.no_grad():
            set_blends(trainer.program.module, blends, min(1.0, step / ramp_steps))

    return raise_blends
