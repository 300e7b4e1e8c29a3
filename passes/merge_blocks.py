"""merge_blocks: merge chains of affine layers into fewer layers by exact re-parameterisation (UPDP stage 4).

Rewrites every chain of affine elements (graph/depth/affine_chains.py: convolutions incl. grouped and
depthwise, linear layers, eval batch norms incl. the reshape-wrapped form left by LayerNorm ->
BatchNorm, per-channel constant mul/div/add/sub such as layer scales, eval dropouts, and a residual
add of the chain's own input) whose intermediate tensors have no other user. One merge at a time, in
this order of preference within a chain:
1. `identity`: an eval dropout / clone / alias next to layers is dropped;
2. `fold_after`: a per-channel map folds into the layer before it, `W' = s W`, `b' = s b + t`;
3. `fold_before`: otherwise into the layer after it, `W'[:, i] = s_i W[:, i]`, `b' = b + W t`, only when
   that gives a plain bias (before a zero-padded convolution the shift would vary at the borders);
4. `residual`: `x + L(x)` with L one layer that keeps the shape becomes `L + I` (identity kernel);
5. `layers`: among the runs of >= 2 consecutive layers, the one whose merge lowers the MACs the most.
The algebra is graph/depth/affine_merge.py: the linear part composes (`W2 W1`, channel contraction of
1x1 / depthwise / kxk kernels, kxk o kxk grown to k1 + s1 (k2 - 1)), and the constant part is the chain
applied to zeros; a constant that varies near padded borders is kept as a [1, C, H, W] bias map.
A run merges only when it is exact (no zero padding of an intermediate map after a kxk convolution,
no dilation), the MACs counter (graph/counting.py) says fewer MACs, the merged kernel side is at most
`max_kernel_growth` times the largest merged kernel side, and, when the caller gives `measure`, the
measured speed-up of the merged Program over the current one is above `min_speedup`. Folds (1-4)
never change the MACs and only remove nodes, so they are not measured.

Config: `max_kernel_growth` (1.0: kernels never grow), `measure` (None, or a callable
`(before: Program, after: Program) -> speed-up of after`, e.g. built from prunefx.runtime; passes never
import the runtime), `min_speedup` (1.0). Stats: `merges` (every merge: kind, the nodes of the elements
it replaced, the resulting layer, MACs before/after for runs, the measured speed-up), `skipped` (every
candidate still refused at the end, with the reason), `merged` (counts by kind), `macs`, `layers`
(conv2d + linear nodes) and `batch_norms` before and after, `blends_stripped`.
Preconditions: eval mode (refused otherwise: a training batch norm is not affine); finished UPDP
blends (`lerp(act(x), x, 1)`) are stripped first (graph/linearization.strip_finished_blends).
Non-goals: parallel branches (a projection shortcut beside a chain, RepVGG-style sums), padded kxk o
kxk (not one convolution; skipped with the reason), attention, conv1d/3d, transposed convolutions,
per-channel maps with no layer next to them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunefx.graph import Program
from prunefx.graph.counting import count
from prunefx.graph.depth.affine_chains import find_chains
from prunefx.graph.depth.linearization import strip_finished_blends
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result
from prunefx.passes.rewrites.merge_candidates import Candidate, chain_candidate
from prunefx.passes.rewrites.merge_rewrite import apply_merge, describe_merge

aten = torch.ops.aten


class MergeBlocksError(PrunefxError):
    """merge_blocks cannot run on this Program or configuration."""


@dataclass
class MergeBlocksConfig(PassConfig):
    owner: ClassVar[str] = "merge_blocks"

    max_kernel_growth: float = option(1.0, low=1.0, help="largest growth of a kernel side a merge of layers may cause (>= 1)")
    measure: Callable | None = option(source="measure", help="(before, after) -> measured speed-up; a merge of "
                                                             "layers is kept only when it runs faster")
    min_speedup: float = option(1.0, low=0.0, low_open=True, help="the measured speed-up a merge of layers must reach")


@dataclass(frozen=True)
class Merged:
    """What merge_blocks hands to its caller (`prunefx depth`): how many merges it made."""

    merges: int


@shipped_pass
@graph_pass(config=MergeBlocksConfig, in_place=True, exact=True, reads=("linearize",), writes=("linearize",))
def merge_blocks(program: Program, /, *, config: dict | None = None) -> Result:
    settings = MergeBlocksConfig.parse(config)
    if program.training:
        raise MergeBlocksError(f"merge_blocks is exact in eval mode only, and '{program.name}' is in training "
                               f"mode (batch norms use batch statistics); call program.eval() first")
    stripped = strip_finished_blends(program)
    before = _census(program)
    merges, skipped = _merge_all(program, settings)
    # Refusals of candidates that a later merge replaced are history; keep those that still stand.
    names = {node.name for node in program.graph.nodes}
    skipped = {key: reason for key, reason in skipped.items() if all(name in names for name in key[1:])}
    if merges:
        program.recompile()
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
            speedup = _measured(program, candidate, config)
            stale = False  # recompiled, whether kept or undone
            if speedup <= config.min_speedup:
                refused[candidate.key] = f"measured speed-up {speedup:.3f}x is not above {config.min_speedup}x"
                continue
            record["speedup"] = round(speedup, 4)
        else:
            apply_merge(program.module, candidate)
            stale = True
        merges.append(record)


def _measured(program: Program, candidate: Candidate, config: MergeBlocksConfig) -> float:
    """Apply the candidate, measure against a copy of the Program before it, and undo it unless faster."""
    before = program.clone()
    apply_merge(program.module, candidate)
    program.recompile()
    assert config.measure is not None  # only measured candidates come here
    speedup = float(config.measure(before, program))
    if speedup <= config.min_speedup:
        program.module = before.module
    return speedup
