"""The candidates of merge_blocks (passes/merge_blocks.py): in one chain of affine elements, the merge it
prefers (an identity dropped, a per-channel map folded after or before a layer, a residual folded into
its layer, then the run of layers whose merge saves the most MACs), each checked for exactness, MACs and
kernel growth by the algebra of graph/depth/affine_merge.py before anything is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunefx.graph.counting import node_macs
from prunefx.graph.depth.affine_chains import Chain, Element
from prunefx.graph.depth.affine_maps import Conv, Linear, NotExact
from prunefx.graph.depth.affine_merge import add_identity, merge, merged_shape

aten = torch.ops.aten


@dataclass
class MergeCandidate:
    kind: str                # identity | fold_after | fold_before | residual | layers
    elements: list[Element]  # the consecutive chain elements it replaces
    op: Conv | Linear | None = None
    macs: tuple[int, int] | None = None  # (before, after), for runs of layers

    @property
    def key(self) -> tuple[str, ...]:
        return (self.kind, *(element.name for element in self.elements))


def chain_candidate(chain: Chain, config, refused: dict, runs: dict) -> MergeCandidate | None:
    elements = chain.elements
    if not any(element.kind == "layer" for element in elements):
        return None
    for element in elements:
        if element.kind == "identity":
            return MergeCandidate("identity", [element])
    for index, element in enumerate(elements):
        if element.kind == "channel" and (found := _channel_fold(elements, index, refused)) is not None:
            return found
    for index, element in enumerate(elements):
        if element.kind == "residual" and (found := _residual_fold(elements, index, refused)) is not None:
            return found
    return _best_run(elements, config, refused, runs)


def _input_shape(element: Element) -> tuple[int, ...]:
    return tuple(int(s) for s in element.data.meta["val"].shape)


def _channel_fold(elements: list[Element], index: int, refused: dict) -> MergeCandidate | None:
    channel = elements[index]
    neighbours = []
    if index > 0 and elements[index - 1].kind == "layer":
        neighbours.append(MergeCandidate("fold_after", [elements[index - 1], channel]))
    if index + 1 < len(elements) and elements[index + 1].kind == "layer":
        neighbours.append(MergeCandidate("fold_before", [channel, elements[index + 1]]))
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


def _residual_fold(elements: list[Element], index: int, refused: dict) -> MergeCandidate | None:
    body = elements[:index]
    candidate = MergeCandidate("residual", [*body, elements[index]])
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


def _best_run(elements: list[Element], config, refused: dict, runs: dict) -> MergeCandidate | None:
    """The run of consecutive layers whose merge is allowed and saves the most MACs."""
    best = None
    for start in range(len(elements)):
        for end in range(start + 2, len(elements) + 1):
            if elements[end - 1].kind != "layer" or elements[start].kind != "layer":
                break
            candidate = MergeCandidate("layers", elements[start:end])
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


def _evaluate_run(candidate: MergeCandidate, config) -> tuple[str | None, bool]:
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
    if growth > config.max_kernel_growth:
        return f"kernel side grows {growth:.2f}x, above max_kernel_growth {config.max_kernel_growth}", True
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


def _saved(candidate: MergeCandidate) -> int:
    """MACs a merge of layers saves; its MACs are set when the run was evaluated."""
    before, after = candidate.macs or (0, 0)
    return before - after
