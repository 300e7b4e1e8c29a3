"""Block discovery for depth pruning (UPDP): the units whose non-linearities can be removed.

A *block* holds at least one activation and becomes one affine map once its activations are identity and its
layer norms batch norms: a closed residual region (a fork joined again by an `add`) or a chain of activations
outside every region, grouped by the module that owns them (`features.2`). `affine` says whether it can be
merged afterwards (`reason` names the operator that stops it). The definitions: see docs/algorithms.md,
'linearize_blocks'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from prunefx.graph.depth.norm_replacement import why_not_replaceable
from prunefx.graph.operators import CONVOLUTIONS, LINEARS
from prunefx.graph.training_flags import DROPOUTS

aten = torch.ops.aten

# Element-wise non-linearities that linearisation replaces by identity (gates such as sigmoid are not
# activations in this sense: they multiply another tensor, which is never affine).
ACTIVATIONS = {
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.relu6.default, aten.gelu.default, aten.gelu_.default, aten.silu.default, aten.silu_.default,
    aten.hardswish.default, aten.hardswish_.default, aten.leaky_relu.default, aten.leaky_relu_.default,
    aten.elu.default, aten.elu_.default, aten.mish.default, aten.mish_.default,
}

LAYER_NORMS = {aten.layer_norm.default}

# Operators that are affine in their single activation input (parameters and constants aside).
_AFFINE_LAYERS = CONVOLUTIONS | LINEARS | {aten.batch_norm.default, aten.layer_norm.default}
_SHAPE_OPS = {
    aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int, aten.flatten.using_ints,
    aten.unflatten.int, aten.contiguous.default, aten.clone.default, aten.alias.default, aten.squeeze.dim,
    aten.unsqueeze.default, aten._assert_tensor_metadata.default, *DROPOUTS,
}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}
# Linear in their activation input, but nothing merge_blocks folds into a convolution: a block holding one is
# affine once linearised yet cannot merge, and is said so (not called non-linear).
_LINEAR_UNMERGED = {
    aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.mean.dim, aten.sum.dim_IntList,
    aten.pad.default, aten.constant_pad_nd.default, aten.cat.default, aten.stack.default,
    aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec,
}
_ELEMENTWISE_WITH_CONSTANT = {aten.mul.Tensor, aten.div.Tensor}


@dataclass
class Block:
    name: str                     # the owning module's path, e.g. "features.3" (or a node name)
    kind: str                     # "residual" or "chain"
    nodes: list[str]              # every node of the block, in graph order
    activations: list[str]        # the activation nodes linearisation removes
    layer_norms: list[str] = field(default_factory=list)  # the layer norms it turns into batch norms
    fork: str | None = None       # residual regions: the node that forks and the add that joins
    join: str | None = None
    affine: bool = True           # affine once linearised (so mergeable)
    reason: str = ""              # why not, when it is not

    def to_dict(self) -> dict:
        return asdict(self)


def find_blocks(module: torch.fx.GraphModule) -> list[Block]:
    """The residual regions holding an activation, then the chain blocks, each in graph order."""
    order = {node: index for index, node in enumerate(module.graph.nodes)}
    regions = _residual_regions(module.graph, order)
    blocks = [_make_block(nodes, "residual", fork, join, order) for fork, join, nodes in regions]
    blocks = _innermost([block for block in blocks if block.activations])
    inside = {name for block in blocks for name in block.nodes}
    depth = _block_depth(module.graph, blocks)
    blocks = _absorb_same_module(blocks, _chain_blocks(module.graph, inside, depth, order), order)
    _name_uniquely(blocks)
    return sorted(blocks, key=lambda block: order[_node(module.graph, block.nodes[0])])


def _node(graph: torch.fx.Graph, name: str) -> torch.fx.Node:
    return next(node for node in graph.nodes if node.name == name)


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The inputs of `node` that are activations (not parameters, buffers or values computed from them)."""
    return [arg for arg in node.all_input_nodes if not is_constant(arg)]


def is_constant(node: torch.fx.Node) -> bool:
    """Whether `node` depends on parameters and buffers only (e.g. a reshaped layer scale). A walk with its own
    stack, not recursion: an activation's ancestry is as deep as the graph (EfficientNet-B1's went past Python's
    recursion limit in the depth route)."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen or current.op == "get_attr":
            continue
        if current.op != "call_function":
            return False
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return True


def _residual_regions(graph: torch.fx.Graph, order: dict) -> list[tuple[torch.fx.Node, torch.fx.Node, set]]:
    """(fork, add, inner nodes) for every add whose two inputs meet at a common fork, region closed."""
    found = []
    for join in graph.nodes:
        if join.op != "call_function" or join.target not in _ADDS:
            continue
        inputs = _tensor_inputs(join)
        if len(inputs) != 2:
            continue
        region = _region_between(inputs, join, order)
        if region is not None:
            found.append(region)
    return found


def _ancestors(node: torch.fx.Node, stop_before: int, order: dict) -> set:
    """Activation ancestors of `node` (itself included) that come after graph position `stop_before`."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen or order[current] < stop_before:
            continue
        seen.add(current)
        stack.extend(_tensor_inputs(current))
    return seen


def _region_between(inputs: list[torch.fx.Node], join: torch.fx.Node, order: dict):
    """The closed region from the latest common ancestor of the add's two inputs to the add, or None."""
    first = _ancestors(inputs[0], 0, order)
    second = _ancestors(inputs[1], 0, order)
    common = first & second
    if not common:
        return None
    fork = max(common, key=order.get)
    inner = (_ancestors(inputs[0], order[fork], order) | _ancestors(inputs[1], order[fork], order)) - {fork}
    if not inner:
        return None
    for node in inner:
        if any(user not in inner and user is not join for user in node.users):
            return None  # an inner tensor is read outside: not a self-contained block
        if any(arg not in inner and arg is not fork for arg in _tensor_inputs(node)):
            return None  # a second entry (e.g. a skip connection from further back)
    return fork, join, inner


def _innermost(blocks: list[Block]) -> list[Block]:
    """Drop a region that contains another one (a residual around residual blocks): blocks must not
    overlap, and the inner ones are what a user prunes; the outer region's other activations become
    chain blocks."""
    sets = [set(block.nodes) for block in blocks]
    return [block for block, nodes in zip(blocks, sets) if not any(other < nodes for other in sets)]


def _make_block(nodes, kind: str, fork, join, order: dict) -> Block:
    ordered = sorted(nodes, key=order.get)
    members = ordered + ([join] if join is not None else [])
    activations = [n.name for n in ordered if n.op == "call_function" and n.target in ACTIVATIONS]
    layer_norms = [n.name for n in ordered if n.op == "call_function" and n.target in LAYER_NORMS]
    affine, reason = _affine_once_linear(ordered, fork)
    return Block(name=_owner_path(members), kind=kind, nodes=[n.name for n in members],
                 activations=activations, layer_norms=layer_norms, fork=fork.name if fork is not None else None,
                 join=join.name if join is not None else None, affine=affine, reason=reason)


def _affine_once_linear(nodes: list[torch.fx.Node], fork) -> tuple[bool, str]:
    """Whether every node is affine in the block's input once activations are gone; else which are not."""
    blockers: list[str] = []  # not affine
    unmerged: list[str] = []  # affine, but nothing merge_blocks folds
    for node in nodes:
        if node.op == "call_function" and node.target in LAYER_NORMS and (why := why_not_replaceable(node)):
            return False, why  # it stays a layer norm, which is not affine
        if node.op != "call_function" or node.target in ACTIVATIONS | _AFFINE_LAYERS | _SHAPE_OPS | _ADDS:
            continue  # (a sum of affine maps is affine)
        if node.target is aten.sub.Tensor:
            continue
        if node.target in _ELEMENTWISE_WITH_CONSTANT and _scaled_by_a_constant(node):
            continue  # a layer scale or a constant shift
        kind = unmerged if node.target in _LINEAR_UNMERGED else blockers
        if _operator_name(node) not in kind:
            kind.append(_operator_name(node))
    if blockers:
        return False, f"not affine: {', '.join(blockers)}"
    if unmerged:
        return False, f"linear, but not foldable into a convolution: {', '.join(unmerged)}"
    return True, ""


def _scaled_by_a_constant(node: torch.fx.Node) -> bool:
    """x * c, c * x or x / c: one activation operand, counted with repeats (x * x is not affine), and never a
    divisor (c / x is not)."""
    operands = [arg for arg in node.args[:2] if isinstance(arg, torch.fx.Node) and not is_constant(arg)]
    return len(operands) <= 1 and not (node.target is aten.div.Tensor and operands and node.args[0] is not operands[0])


def _operator_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def in_block(node: torch.fx.Node, block: str) -> bool:
    """Whether `node` lies in the module named `block` (a Block's name), by the module path export recorded: node
    names change as passes rewrite a graph, module paths stay."""
    path = ".".join(_module_path(node))
    return path == block or path.startswith(block + ".")


def _module_path(node: torch.fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return [part for part in path.split(".") if part] if path else []


def _owner_path(nodes: list[torch.fx.Node]) -> str:
    """The longest module path every node of the block lives under (a node name when there is none)."""
    paths = [_module_path(node) for node in nodes if node.op == "call_function"]
    paths = [path for path in paths if path]
    if not paths:
        return nodes[0].name
    common = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(common), len(path)) and common[length] == path[length]:
            length += 1
        common = common[:length]
    return ".".join(common) or nodes[0].name


def _block_depth(graph: torch.fx.Graph, blocks: list[Block]) -> int | None:
    """The module depth at which residual blocks live (the most common one), to cut chains alike."""
    depths = [len(block.name.split(".")) for block in blocks if block.kind == "residual"]
    return max(set(depths), key=depths.count) if depths else None


def _chain_blocks(graph: torch.fx.Graph, inside: set[str], depth: int | None, order: dict) -> list[Block]:
    """Activations outside every region, grouped by their owning module cut at `depth` (alone without)."""
    groups: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in ACTIVATIONS or node.name in inside:
            continue
        path = _module_path(node)
        key = ".".join(path[:depth]) if depth is not None and path else node.name
        groups.setdefault(key or node.name, []).append(node)
    blocks = []
    for key, activations in groups.items():
        nodes = _chain_nodes(activations, inside, key)
        block = _make_block(nodes, "chain", None, None, order)
        block.name = key
        blocks.append(block)
    return blocks


def _chain_nodes(activations: list[torch.fx.Node], inside: set[str], key: str) -> set[torch.fx.Node]:
    """The activations plus the non-region call nodes owned by the same module (its convs and norms)."""
    nodes = set(activations)
    graph = activations[0].graph
    for node in graph.nodes:
        path = ".".join(_module_path(node))
        if node.op == "call_function" and node.name not in inside and (path == key or path.startswith(key + ".")):
            nodes.add(node)
    return nodes


def _absorb_same_module(regions: list[Block], chains: list[Block], order: dict) -> list[Block]:
    """A chain owned by the same module as one residual region joins it (a ResNet block's activation
    after its add belongs to that block); other chains stay blocks of their own."""
    by_name: dict[str, list[Block]] = {}
    for block in regions:
        by_name.setdefault(block.name, []).append(block)
    kept = list(regions)
    for chain in chains:
        owners = by_name.get(chain.name, [])
        if len(owners) != 1:
            kept.append(chain)
            continue
        owner = owners[0]
        owner.nodes += [name for name in chain.nodes if name not in owner.nodes]
        owner.activations += chain.activations
        owner.layer_norms += chain.layer_norms
        if owner.affine and not chain.affine:
            owner.affine, owner.reason = False, chain.reason
    return kept


def _name_uniquely(blocks: list[Block]) -> None:
    """Two blocks under one module (a ViT block's attention and MLP halves) get `#1`, `#2` suffixes."""
    counts: dict[str, int] = {}
    for block in blocks:
        counts[block.name] = counts.get(block.name, 0) + 1
    seen: dict[str, int] = {}
    for block in blocks:
        if counts[block.name] > 1:
            seen[block.name] = seen.get(block.name, 0) + 1
            block.name = f"{block.name}#{seen[block.name]}"
