"""recalibrate_batchnorm: re-estimate the running statistics of every batch norm on calibration data.

After a structural change the running statistics no longer match the activations; this pass sets them to the
exact statistics of the rewritten network over all calibration batches (not momentum updates: independent
of batch order, idempotent). The formulas, the two walks over the graph and the config: see
docs/algorithms.md, 'recalibrate_batchnorm'.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch

from prunefx.graph import Program
from prunefx.graph.activations import calibration_inputs, run_tapped, tap_nodes
from prunefx.graph.attributes import attribute_name, get_tensor, set_tensor, tensor_name
from prunefx.graph.batch_walk import live_bytes, walk
from prunefx.graph.errors import PrunefxError
from prunefx.passes.core.contract import graph_pass
from prunefx.passes.core.pass_config import PassConfig, option
from prunefx.passes.core.registry import shipped_pass
from prunefx.passes.core.result import Result

aten = torch.ops.aten
# Both carry (input, weight, bias, running_mean, running_var, ...) as their first five arguments.
_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
_WALK_BUDGET = 2 << 30  # bytes of activations held at once for the one-pass walk (all batches together)


@dataclass
class RecalibrateBatchnormConfig(PassConfig):
    owner: ClassVar[str] = "recalibrate_batchnorm"

    data: Any = option(source="calibration", help="input batches to re-estimate the statistics on")
    max_batches: int | None = option(low=1, help="read at most this many batches (all by default)")
    nodes: list[str] | None = option(help="only these batch-norm nodes (all by default)", cli=False)


@shipped_pass
@graph_pass(config=RecalibrateBatchnormConfig, in_place=True)
def recalibrate_batchnorm(program: Program, /, *, config: dict | None = None) -> Result:
    settings = RecalibrateBatchnormConfig.parse(config)
    batches = calibration_inputs(program.example_inputs, settings.data, max_batches=settings.max_batches,
                                 what="recalibrate_batchnorm")
    with program.evaluating():  # each flag as it was after: a frozen batch norm in a training model stays frozen
        found, skipped = _recalibratable(program.module)
        norms = _only(found, settings.nodes)
        if norms and live_bytes(program.module, norms) * len(batches) <= _WALK_BUDGET:
            changed, passes = _recalibrate_in_one_walk(program.module, norms, batches), 1
        else:
            levels = _levels(program.module, norms)
            passes = len(set(levels.values()))
            changed = sum(_recalibrate_level(program.module, [n for n in norms if levels[n] == level], batches)
                          for level in range(max(levels.values(), default=-1) + 1))
    stats = {"batch_norms": len(found) + sum(skipped.values()), "recalibrated": len(norms),
             "changed": changed, "skipped": dict(skipped), "passes_over_data": passes,
             "batches": len(batches), "images": sum(int(batch[0].shape[0]) for batch in batches),
             "variance": "unbiased"}
    return Result(program, modified=changed > 0, stats=stats)


def _only(norms: list[torch.fx.Node], names) -> list[torch.fx.Node]:
    """The batch norms named in `names` (all when None); an unknown name is an error, not a no-op."""
    if names is None:
        return norms
    by_name = {node.name: node for node in norms}
    missing = sorted(set(names) - set(by_name))
    if missing:
        raise PrunefxError(f"recalibrate_batchnorm: {missing} are not recalibratable batch-norm nodes")
    return [node for node in norms if node.name in set(names)]


def _recalibratable(module: torch.fx.GraphModule) -> tuple[list[torch.fx.Node], Counter]:
    """Eval-mode batch norms whose running statistics are tensors of their own, and the others by reason."""
    candidates = [n for n in module.graph.nodes if n.op == "call_function" and n.target in _BATCH_NORMS]
    uses = Counter(attribute_name(n.args[3]) for n in candidates)
    norms: list[torch.fx.Node] = []
    skipped: Counter[str] = Counter()
    for node in candidates:
        mean, var = attribute_name(node.args[3]), attribute_name(node.args[4])
        if mean is None or var is None:
            skipped["no running statistics"] += 1
        elif uses[mean] > 1:
            skipped["running statistics shared by several batch norms"] += 1
        else:
            norms.append(node)
    return norms, skipped


def _levels(module: torch.fx.GraphModule, norms: list[torch.fx.Node]) -> dict[torch.fx.Node, int]:
    """Level of each batch norm: 0 when no batch norm is upstream of it, else 1 + the highest upstream level.
    `above[node]` is the highest level among the batch norms a node depends on (-1: none)."""
    norm_set = set(norms)
    above: dict[torch.fx.Node, int] = {}
    levels: dict[torch.fx.Node, int] = {}
    for node in module.graph.nodes:  # graph order is topological
        inherited = max((above[arg] for arg in node.all_input_nodes), default=-1)
        if node in norm_set:
            levels[node] = inherited + 1
            above[node] = levels[node]
        else:
            above[node] = inherited
    return levels


def _recalibrate_in_one_walk(module: torch.fx.GraphModule, norms: list[torch.fx.Node], batches) -> int:
    """One walk over all batches at once: each batch norm's statistics set just before it runs."""
    changed = 0

    def set_norm(node: torch.fx.Node, inputs: list[torch.Tensor]) -> None:
        nonlocal changed
        total: list = [0, None, None]
        for x in inputs:
            _accumulate(total, x)
        changed += _set_statistics(module, node, *total)

    walk(module, batches, norms, set_norm)
    return changed


def _recalibrate_level(module: torch.fx.GraphModule, norms: list[torch.fx.Node], batches) -> int:
    """One pass over the data reading the inputs of `norms`; set their statistics; return how many changed."""
    inputs = [cast(torch.fx.Node, node.args[0]) for node in norms]  # a batch norm reads a tensor node
    tapped = tap_nodes(module, [node.name for node in inputs])
    sums: list[list] = [[0, None, None] for _ in norms]  # n, S1, S2 per batch norm
    for batch in batches:
        for total, x in zip(sums, run_tapped(tapped, batch)):
            _accumulate(total, x)
    return sum(_set_statistics(module, node, *total) for node, total in zip(norms, sums))


def _accumulate(total: list, x: torch.Tensor) -> None:
    """Add one batch's n, S1, S2 per channel (dim 1) to `total`, in float64."""
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # channels x values
    total[0] += x.shape[1]
    s1, s2 = x.sum(dim=1), x.square().sum(dim=1)
    total[1] = s1 if total[1] is None else total[1] + s1
    total[2] = s2 if total[2] is None else total[2] + s2


def _set_statistics(module: torch.fx.GraphModule, node: torch.fx.Node, n: int, s1, s2) -> bool:
    if n < 2:
        raise PrunefxError(f"recalibrate_batchnorm: {node.name} saw {n} value per channel; the unbiased "
                           f"variance needs at least 2 (give more or larger calibration batches)")
    mean = s1 / n
    var = ((s2 - s1 * mean) / (n - 1)).clamp(min=0.0)  # rounding can make a constant channel slightly negative
    changed = False
    for arg, value in ((node.args[3], mean), (node.args[4], var)):
        old = get_tensor(module, tensor_name(arg))
        new = value.to(dtype=old.dtype, device=old.device)
        if not torch.equal(old, new):
            set_tensor(module, tensor_name(arg), new)
            changed = True
    return changed
