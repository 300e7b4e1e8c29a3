"""merge_blocks: merge chains of affine layers into fewer layers by exact re-parameterisation (UPDP stage 4).

Folds identities and per-channel maps into neighbouring layers and merges runs of layers where that is exact
and lowers the MACs (and, given `measure`, runs faster); the algebra is graph/depth/affine_merge.py. The order
of merges, the conditions and the config: see docs/algorithms.md, 'merge_blocks'.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from prunefx.graph import Program
from prunefx.graph.counting import count
from prunefx.graph.depth.affine_chains import find_chains
from prunefx.graph.depth.linearization import strip_finished_blends
from prunefx.graph.errors import PrunefxError
from prunefx.graph.timing import Timing, confidence_text
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.rewrites.merge_candidates import MergeCandidate, chain_candidate
from prunefx.passes.rewrites.merge_config import MergeBlocksConfig
from prunefx.passes.rewrites.merge_rewrite import apply_merge, describe_merge
from prunefx.passes.rewrites.sparse_masks import refuse_sparse_weights

aten = torch.ops.aten


class MergeBlocksError(PrunefxError):
    """merge_blocks cannot run on this Program or configuration."""


# How a refusal of a merge of layers that measured no faster begins (prunefx depth reads it in the stats' `skipped`)
MEASURED_SLOWER = "measured speed-up"


@dataclass(frozen=True)
class Merged:
    """What merge_blocks hands to its caller (`prunefx depth`): how many merges it made."""

    merges: int


@shipped_pass
@graph_pass(config=MergeBlocksConfig, in_place=True, exact=True, reads=("linearize", "sparsity"),
            writes=("linearize",))
def merge_blocks(program: Program, /, *, config: dict | None = None) -> Result:
    settings = MergeBlocksConfig.parse(config)
    if program.training:
        raise MergeBlocksError(f"merge_blocks is exact in eval mode only, and '{program.name}' is in training "
                               f"mode (batch norms use batch statistics); call program.eval() first")
    refuse_sparse_weights(program, "merge_blocks", "multiplying a block's kernels into one")
    stripped = strip_finished_blends(program)
    before = _census(program)
    merges, skipped = _merge_all(program, settings)
    # Refusals of candidates that a later merge replaced are history; keep those that still stand.
    names = {node.name for node in program.graph.nodes}
    skipped = {key: reason for key, reason in skipped.items() if all(name in names for name in key[1:])}
    if merges:  # an exact merge keeps every shape, and its new nodes carry theirs (merge_rewrite.apply_merge)
        program.recompile_keeping_shapes()
    after = _census(program)
    stats = {"merged": dict(Counter(merge["kind"] for merge in merges)), "merges": merges,
             "skipped": [{"kind": key[0], "nodes": list(key[1:]), "reason": reason} for key, reason in skipped.items()],
             "blends_stripped": stripped, "max_kernel_growth": settings.max_kernel_growth,
             "measured": settings.measure is not None}
    stats.update({f"{name}_before": value for name, value in before.items()})
    stats.update({f"{name}_after": value for name, value in after.items()})
    return Result(program, modified=bool(merges or stripped), stats=stats, facts=Merged(len(merges)))


def _census(program: Program) -> dict[str, int]:
    targets = Counter(node.target for node in program.graph.nodes if node.op == "call_function")
    return {"macs": count(program).macs, "layers": targets[aten.conv2d.default] + targets[aten.linear.default],
            "batch_norms": targets[aten.batch_norm.default]}


# --- the merge loop -----------------------------------------------------------------------------------
def _merge_all(program: Program, config: MergeBlocksConfig) -> tuple[list[dict], dict[tuple, str]]:
    """Apply the preferred candidate of the first chain that has one, until none is left. Chains are read
    again after every merge (node names are stable, so refusals and compositions are remembered)."""
    merges: list[dict] = []
    refused: dict[tuple, str] = {}
    runs: dict[tuple, tuple] = {}  # key -> (merged layer, MACs, exact) of every run evaluated
    stale = False  # generated code behind the graph (recompiled at the end, or before a measurement)
    while True:
        candidate = next((found for chain in find_chains(program.module)
                          if (found := chain_candidate(chain, config, refused, runs)) is not None), None)
        if candidate is None:
            return merges, refused
        record = describe_merge(candidate)
        if candidate.kind == "layers" and config.measure is not None:
            if stale:
                program.recompile()
            timing = _measured(program, candidate, config)
            stale = False  # recompiled, whether kept or undone
            if timing.speedup <= config.min_speedup:
                refused[candidate.key] = f"{MEASURED_SLOWER} {_reading(timing)} is not above {config.min_speedup}x"
                continue
            record["speedup"] = round(timing.speedup, 4)
            if timing.method != "point":
                record["speedup_interval"] = [round(timing.low, 4), round(timing.high, 4)]
        else:
            apply_merge(program.module, candidate)
            stale = True
        merges.append(record)


def _measured(program: Program, candidate: MergeCandidate, config: MergeBlocksConfig) -> Timing:
    """Apply the candidate, measure against a copy of the Program before it, and undo it unless faster. A short
    reading that says faster is not taken on trust where `measure` offers `confirmed` (prunefx.runtime's do): the
    longer confirmation, over fresh processes, decides (a short reading of an equally fast merge is a coin toss)."""
    before = program.clone()
    apply_merge(program.module, candidate)
    program.recompile()
    assert config.measure is not None  # only measured candidates come here
    speedup = float(config.measure(before, program))
    timing = Timing(speedup, 1.0, 0.0)  # the ratio itself, as a point
    confirmed = getattr(config.measure, "confirmed", None)
    if speedup > config.min_speedup and callable(confirmed):
        timing = Timing.of(confirmed(before, program, config.min_speedup))
    if timing.speedup <= config.min_speedup:
        program.module = before.module
    return timing


def _reading(timing: Timing) -> str:
    """`1.012x`, with its interval where the measurement gave one."""
    if timing.method == "point":
        return f"{timing.speedup:.3f}x"
    return f"{timing.speedup:.3f}x ({confidence_text(timing.confidence)} interval {timing.low:.3f}-{timing.high:.3f})"
