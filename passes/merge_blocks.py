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
from prunefx.graph.attributes import free_name, get_tensor, set_tensor, users_of_tensor
from prunefx.graph.counting import count, node_macs
from prunefx.graph.depth.affine_chains import Chain, Element, find_chains
from prunefx.graph.depth.affine_merge import Conv, Linear, NotExact, add_identity, merge, merged_shape
from prunefx.graph.depth.linearization import strip_finished_blends
from prunefx.graph.errors import PrunefxError
from prunefx.passes.contract import graph_pass
from prunefx.passes.pass_config import PassConfig, option
from prunefx.passes.result import Result

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


@dataclass
class Candidate:
    kind: str                # identity | fold_after | fold_before | residual | layers
    elements: list[Element]  # the consecutive chain elements it replaces
    op: Conv | Linear | None = None
    macs: tuple[int, int] | None = None  # (before, after), for runs of layers

    @property
    def key(self) -> tuple[str, ...]:
        return (self.kind, *(element.name for element in self.elements))


@graph_pass(config=MergeBlocksConfig, in_place=True, exact=True, reads=("linearize",), writes=("linearize",))
def merge_blocks(program: Program, /, *, config: dict | None = None) -> Result:
    config = _checked(config)
    if program.training:
        raise MergeBlocksError(f"merge_blocks is exact in eval mode only, and '{program.name}' is in training "
                               f"mode (batch norms use batch statistics); call program.eval() first")
    stripped = strip_finished_blends(program)
    before = _census(program)
    merges, skipped = _merge_all(program, config)
    # Refusals of candidates that a later merge replaced are history; keep those that still stand.
    names = {node.name for node in program.graph.nodes}
    skipped = {key: reason for key, reason in skipped.items() if all(name in names for name in key[1:])}
    if merges:
        program.recompile()
    after = _census(program)
    stats = {"merged": dict(Counter(merge["kind"] for merge in merges)), "merges": merges,
             "skipped": [{"kind": key[0], "nodes": list(key[1:]), "reason": reason} for key, reason in skipped.items()],
             "blends_stripped": stripped, "max_kernel_growth": config["max_kernel_growth"],
             "measured": config["measure"] is not None}
    stats.update({f"{name}_before": value for name, value in before.items()})
    stats.update({f"{name}_after": value for name, value in after.items()})
    return Result(program, modified=bool(merges or stripped), stats=stats)


def _checked(config: dict | None) -> dict:
    return MergeBlocksConfig.parse(config).as_dict()


def _census(program: Program) -> dict[str, int]:
    targets = Counter(node.target for node in program.graph.nodes if node.op == "call_function")
    return {"macs": count(program).macs, "layers": targets[aten.conv2d.default] + targets[aten.linear.default],
            "batch_norms": targets[aten.batch_norm.default]}


# --- the merge loop -----------------------------------------------------------------------------------
def _merge_all(program: Program, config: dict) -> tuple[list[dict], dict[tuple, str]]:
    """Apply the preferred candidate of the first chain that has one, until none is left. Chains are read
    again after every merge (node names are stable, so refusals and compositions are remembered)."""
    merges: list[dict] = []
    refused: dict[tuple, str] = {}
    runs: dict[tuple, tuple] = {}  # key -> (merged layer, MACs, exact) of every run evaluated
    stale = False  # generated code behind the graph (recompiled at the end, or before a measurement)
    while True:
        candidate = next((found for chain in find_chains(program.module)
                          if (found := _chain_candidate(chain, config, refused, runs)) is not None), None)
        if candidate is None:
            return merges, refused
        record = _describe(candidate)
        if candidate.kind == "layers" and config["measure"] is not None:
            if stale:
                program.recompile()
            speedup = _measured(program, candidate, config)
            stale = False  # recompiled, whether kept or undone
            if speedup <= config["min_speedup"]:
                refused[candidate.key] = f"measured speed-up {speedup:.3f}x is not above {config['min_speedup']}x"
                continue
            record["speedup"] = round(speedup, 4)
        else:
            _apply(program.module, candidate)
            stale = True
        merges.append(record)


def _measured(program: Program, candidate: Candidate, config: dict) -> float:
    """Apply the candidate, measure against a copy of the Program before it, and undo it unless faster."""
    before = program.clone()
    _apply(program.module, candidate)
    program.recompile()
    speedup = float(config["measure"](before, program))
    if speedup <= config["min_speedup"]:
        program.module = before.module
    return speedup


def _chain_candidate(chain: Chain, config: dict, refused: dict, runs: dict) -> Candidate | None:
    elements = chain.elements
    if not any(element.kind == "layer" for element in elements):
        return None
    for element in elements:
        if element.kind == "identity":
            return Candidate("identity", [element])
    for index, element in enumerate(elements):
        if element.kind == "channel" and (found := _channel_fold(elements, index, refused)) is not None:
            return found
    for index, element in enumerate(elements):
        if element.kind == "residual" and (found := _residual_fold(elements, index, refused)) is not None:
            return found
    return _best_run(elements, config, refused, runs)


def _input_shape(element: Element) -> tuple[int, ...]:
    return tuple(int(s) for s in element.data.meta["val"].shape)


def _channel_fold(elements: list[Element], index: int, refused: dict) -> Candidate | None:
    channel = elements[index]
    neighbours = []
    if index > 0 and elements[index - 1].kind == "layer":
        neighbours.append(Candidate("fold_after", [elements[index - 1], channel]))
    if index + 1 < len(elements) and elements[index + 1].kind == "layer":
        neighbours.append(Candidate("fold_before", [channel, elements[index + 1]]))
    for candidate in neighbours:
        if candidate.key in refused:
            continue
        layer = candidate.elements[1 if candidate.kind == "fold_before" else 0]
        try:
            candidate.op = merge([element.op for element in candidate.elements], _input_shape(candidate.elements[0]))
        except NotExact as reason:
            refused[candidate.key] = str(reason)
            continue
        if getattr(candidate.op, "bias_map", None) is not None and getattr(layer.op, "bias_map", None) is None:
            refused[candidate.key] = ("folding it into the zero-padded convolution after it needs a bias map (the "
                                      "shift varies near the borders): an extra node for nothing")
            continue
        return candidate
    if not neighbours:
        refused.setdefault(("channel", channel.name), "no layer next to it in the chain to fold into")
    return None


def _residual_fold(elements: list[Element], index: int, refused: dict) -> Candidate | None:
    body = elements[:index]
    candidate = Candidate("residual", [*body, elements[index]])
    if candidate.key in refused:
        return None
    if len(body) != 1 or body[0].kind != "layer":
        kinds = ", ".join(element.kind for element in body)
        refused[candidate.key] = f"the residual wraps {len(body)} elements ({kinds}), not one layer"
        return None
    try:
        candidate.op = add_identity(body[0].op)
    except NotExact as reason:
        refused[candidate.key] = str(reason)
        return None
    return candidate


def _best_run(elements: list[Element], config: dict, refused: dict, runs: dict) -> Candidate | None:
    """The run of consecutive layers whose merge is allowed and saves the most MACs."""
    best = None
    for start in range(len(elements)):
        for end in range(start + 2, len(elements) + 1):
            if elements[end - 1].kind != "layer" or elements[start].kind != "layer":
                break
            candidate = Candidate("layers", elements[start:end])
            if candidate.key not in runs:  # the merged layer only: elements are re-read after every merge
                reason, exact = _evaluate_run(candidate, config)
                runs[candidate.key] = (candidate.op, candidate.macs, exact)
                if reason is not None:
                    refused[candidate.key] = reason
            candidate.op, candidate.macs, exact = runs[candidate.key]
            if not exact:  # a longer run composes this one first: it fails the same way
                break
            if candidate.key in refused:
                continue
            if best is None or _saved(candidate) > _saved(best):
                best = candidate
    return best


def _evaluate_run(candidate: Candidate, config: dict) -> tuple[str | None, bool]:
    """Fill in the merged layer and its MACs; return (why it is refused or None, whether it is exact)."""
    elements = candidate.elements
    ops = [element.op for element in elements]
    try:
        shape_only = merged_shape(ops)  # decide on MACs and kernel size before composing any weight
    except NotExact as reason:
        return str(reason), False
    macs_before = sum(node_macs(element.nodes[0]) for element in elements)
    macs_after = _predicted_macs(shape_only, _input_shape(elements[0]), elements[-1].output)
    candidate.macs = (macs_before, macs_after)
    if macs_after >= macs_before:
        return f"MACs would not decrease ({macs_before} -> {macs_after})", True
    growth = _kernel_side(shape_only) / max(_kernel_side(op) for op in ops)
    if growth > config["max_kernel_growth"]:
        return f"kernel side grows {growth:.2f}x, above max_kernel_growth {config['max_kernel_growth']}", True
    try:
        candidate.op = merge(ops, _input_shape(elements[0]))
    except NotExact as reason:
        return str(reason), False
    return None, True


def _kernel_side(op) -> int:
    return max(op.kernel) if isinstance(op, Conv) else 1


def _predicted_macs(op, input_shape: tuple[int, ...], output: torch.fx.Node) -> int:
    """MACs of the merged layer by the one counter, on a one-node graph with the known shapes."""
    graph = torch.fx.Graph()
    data, weight = graph.placeholder("x"), graph.placeholder("w")
    node = graph.call_function(aten.conv2d.default if isinstance(op, Conv) else aten.linear.default, (data, weight))
    shapes = {data: input_shape, weight: tuple(op.weight.shape), node: tuple(output.meta["val"].shape)}
    return node_macs(node, lambda value: shapes.get(value))


# --- rewriting --------------------------------------------------------------------------------------
def _apply(module: torch.fx.GraphModule, candidate: Candidate) -> None:
    graph = module.graph
    elements = candidate.elements
    anchor = elements[-1].output
    if candidate.kind == "identity":
        replacement = elements[0].data
    else:
        with graph.inserting_before(anchor):
            replacement = _layer_nodes(module, candidate, anchor)
    anchor.replace_all_uses_with(replacement)
    for node in reversed([node for element in elements for node in element.nodes]):
        graph.erase_node(node)  # intermediates have no other user; constants left behind die at recompile


def _saved(candidate: Candidate) -> int:
    """MACs a merge of layers saves; its MACs are set when the run was evaluated."""
    before, after = candidate.macs or (0, 0)
    return before - after


def _layer_nodes(module: torch.fx.GraphModule, candidate: Candidate, anchor: torch.fx.Node) -> torch.fx.Node:
    op, graph = candidate.op, module.graph
    if op is None:
        raise TypeError(f"merge candidate {candidate.key} has no merged layer")
    template = next(element for element in candidate.elements if element.kind == "layer").nodes[0]
    weight_target = template.args[1].target
    like = get_tensor(module, weight_target)  # the algebra ran in float64 on the CPU: back to the model's kind
    stem = weight_target[: -len("weight")] if weight_target.endswith("weight") else weight_target + "_"
    mine = {node for element in candidate.elements for node in element.nodes}
    tensor = lambda name, value: _tensor_node(module, stem + name, value.to(like), mine)  # noqa: E731
    weight = tensor("weight", op.weight)
    bias = tensor("bias", op.bias) if op.bias is not None else None
    data = candidate.elements[0].data
    if isinstance(op, Conv):
        out = graph.call_function(aten.conv2d.default, (data, weight, bias, list(op.stride), list(op.padding),
                                                        list(op.dilation), op.groups))
    else:
        out = graph.call_function(aten.linear.default, (data, weight, bias))
    out.meta["val"] = anchor.meta["val"]  # same shape; the counter reads it until the final recompile
    if isinstance(op, Conv) and op.bias_map is not None:
        out = graph.call_function(aten.add.Tensor, (out, tensor("bias_map", op.bias_map)))
        out.meta["val"] = anchor.meta["val"]
    return out


def _tensor_node(module: torch.fx.GraphModule, wanted: str, value: torch.Tensor, mine: set) -> torch.fx.Node:
    """A get_attr node for `value`, stored under `wanted` when that name is free or used only by the
    nodes being replaced (so a folded conv keeps its weight's name), else under a fresh name."""
    try:
        get_tensor(module, wanted)
        reusable = all(user in mine for user in users_of_tensor(module, wanted))
    except AttributeError:
        reusable = True
    target = wanted if reusable else free_name(module, wanted)
    set_tensor(module, target, value)
    node = module.graph.get_attr(target)
    node.meta["val"] = get_tensor(module, target)
    return node


def _describe(candidate: Candidate) -> dict:
    record = {"kind": candidate.kind, "nodes": [element.name for element in candidate.elements]}
    op = candidate.op
    if isinstance(op, Conv):
        out_channels, per_group, height, width = op.weight.shape
        record["result"] = (f"conv {height}x{width} {per_group * op.groups}->{out_channels} stride {op.stride} "
                            f"padding {op.padding} groups {op.groups}" + (" + bias map" if op.bias_map is not None
                                                                          else ""))
    elif isinstance(op, Linear):
        record["result"] = f"linear {op.weight.shape[1]}->{op.weight.shape[0]}"
    if candidate.macs is not None:
        record["macs"] = list(candidate.macs)
    return record
