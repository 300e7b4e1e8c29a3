"""Chains of affine graph nodes, read as the maps of graph/depth/affine_merge.py (used by passes/merge_blocks).

An *element* is one affine step with a single data input:
- `layer`: a 2-D convolution or a linear layer whose weight and bias are parameters (get_attr); a
  convolution followed by the add of a constant [1, C, H, W] map (a merged layer's bias map) is one
  element;
- `channel`: an eval-mode batch norm, also in the form `reshape(-1, C) -> batch_norm -> reshape back`
  that graph/depth/norm_replacement.py writes, or a mul/div/add/sub by a per-channel constant (layer scale);
- `identity`: an eval-mode dropout, a clone or an alias;
- `residual`: `add(x, f(x))` where f(x) ends a chain that starts at x.
A *chain* is a maximal sequence of elements in which each reads the previous one's output and that
output has no other user; `input` is what its first element reads. Batch norms in training mode,
layers with computed weights, dilated or string-padded convolutions and every other operator end
chains (never guess: an unknown operator is simply not affine here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.fx.node import map_aggregate

from prunefx.graph.attributes import attribute_name, get_tensor
from prunefx.graph.depth.affine_maps import ChannelAffine, Conv, Linear, batch_norm_affine
from prunefx.graph.training_flags import DROPOUTS

aten = torch.ops.aten
Node = torch.fx.Node

_RESHAPES = {aten.reshape.default, aten.view.default}
_IDENTITIES = {aten.clone.default, aten.alias.default}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}
_ARITHMETIC = {aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor}
# Operators evaluated to fold constant operands such as `gamma.reshape(1, -1, 1, 1)`.
_CONSTANT_OPS = {aten.reshape.default, aten.view.default, aten.unsqueeze.default, aten.squeeze.dim,
                 aten.squeeze.dims, aten.flatten.using_ints, aten.permute.default, aten.expand.default,
                 aten.clone.default, aten._to_copy.default, aten.mul.Tensor, aten.div.Tensor,
                 aten.add.Tensor, aten.sub.Tensor, aten.neg.default}


@dataclass
class Element:
    kind: str                  # "layer" | "channel" | "identity" | "residual"
    nodes: tuple[Node, ...]    # the graph nodes it covers, in graph order; the last one is its output
    data: Node                 # the tensor it reads (for a residual: the output of the body)
    op: Conv | Linear | ChannelAffine | None = None
    skip: Node | None = None   # a residual's other operand: the chain's input
    main: int = 0              # index in `nodes` of the node that names it (the batch norm of a wrapped one)

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def name(self) -> str:
        """Its conv / linear / batch norm / operator node's name: stable until a merge replaces the element."""
        return self.nodes[self.main].name


@dataclass
class Chain:
    input: Node
    elements: list[Element]


def find_chains(module: torch.fx.GraphModule) -> list[Chain]:
    """Every chain of the graph, in graph order (single-element chains included)."""
    chains: list[Chain] = []
    tails: dict[Node, Chain] = {}
    consumed: set[Node] = set()
    for node in module.graph.nodes:
        if node in consumed or node.op != "call_function":
            continue
        element = read_element(module, node) or _residual(node, tails)
        if element is None:
            continue
        consumed.update(element.nodes)
        chain = tails.pop(element.data, None) if len(element.data.users) == 1 else None
        if chain is None:
            chain = Chain(element.data, [])
            chains.append(chain)
        chain.elements.append(element)
        tails[element.output] = chain
    return chains


def read_element(module: torch.fx.GraphModule, node: Node) -> Element | None:
    """The non-residual element that starts at `node`, or None."""
    target = node.target
    if target is aten.conv2d.default:
        return _convolution(module, node)
    if target is aten.linear.default:
        return _linear(module, node)
    if target is aten.batch_norm.default:
        op = _batch_norm(module, node)
        return Element("channel", (node,), node.args[0], op) if op is not None else None
    if target in _RESHAPES:
        return _wrapped_batch_norm(module, node)
    if target in _ARITHMETIC:
        return _constant_channel(module, node)
    if (target in DROPOUTS and len(node.args) > 2 and not node.args[2]) or target in _IDENTITIES:
        return Element("identity", (node,), node.args[0]) if isinstance(node.args[0], Node) else None
    return None


def _shape(node) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(int(s) for s in value.shape) if isinstance(value, torch.Tensor) else None


def _parameter(module, arg) -> torch.Tensor | None:
    name = attribute_name(arg)
    return get_tensor(module, name) if name is not None else None


def _optional_parameter(module, arg) -> tuple[bool, torch.Tensor | None]:
    """(is acceptable, value): None is acceptable, a parameter is, a computed tensor is not."""
    if arg is None:
        return True, None
    value = _parameter(module, arg)
    return value is not None, value


def _pair(values) -> tuple[int, int]:
    values = [int(v) for v in values]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _convolution(module, node: Node) -> Element | None:
    args = list(node.args) + [None, [1, 1], [0, 0], [1, 1], 1][len(node.args) - 2:]
    data, weight_arg, bias_arg, stride, padding, dilation, groups = args[:7]
    weight = _parameter(module, weight_arg)
    ok, bias = _optional_parameter(module, bias_arg)
    if weight is None or not ok or node.kwargs or _shape(data) is None or len(_shape(data)) != 4:
        return None
    op = Conv(weight, bias, _pair(stride), _pair(padding), _pair(dilation), int(groups))
    nodes = (node,)
    bias_map = _following_bias_map(module, node)
    if bias_map is not None:
        op, nodes = replace(op, bias_map=bias_map[1]), (node, bias_map[0])
    return Element("layer", nodes, data, op)


def _following_bias_map(module, node: Node):
    """(add node, map) when the convolution's only user adds a constant map of its full [1, C, H, W] shape."""
    users = list(node.users)
    if len(users) != 1 or users[0].target is not aten.add.Tensor or users[0].kwargs:
        return None
    add = users[0]
    other = add.args[1] if add.args[0] is node else add.args[0]
    value = _constant_value(module, other)
    shape = _shape(node)
    if value is None or shape is None or value.dim() != 4 or value.shape[0] != 1 or tuple(value.shape[1:]) != shape[1:]:
        return None
    return add, value


def _linear(module, node: Node) -> Element | None:
    data, weight_arg = node.args[:2]
    weight = _parameter(module, weight_arg)
    ok, bias = _optional_parameter(module, node.args[2] if len(node.args) > 2 else None)
    if weight is None or not ok or node.kwargs or _shape(data) is None:
        return None
    return Element("layer", (node,), data, Linear(weight, bias))


def _batch_norm(module, node: Node) -> ChannelAffine | None:
    data, weight, bias, mean, var, training, _, eps = node.args[:8]
    if training:
        return None
    mean, var = _parameter(module, mean), _parameter(module, var)
    ok_weight, gamma = _optional_parameter(module, weight)
    ok_bias, beta = _optional_parameter(module, bias)
    shape = _shape(data)
    if mean is None or var is None or not (ok_weight and ok_bias) or shape is None or len(shape) < 2:
        return None
    return batch_norm_affine(gamma, beta, mean, var, float(eps), -1 if len(shape) == 2 else 1)


def _wrapped_batch_norm(module, node: Node) -> Element | None:
    """`reshape(x, [-1, C]) -> batch_norm -> reshape back to x's shape`, channels last."""
    data = node.args[0]
    shape, flat = _shape(data), _shape(node)
    if shape is None or flat is None or len(shape) < 3 or len(flat) != 2 or flat[1] != shape[-1] \
            or len(node.users) != 1:
        return None
    norm = next(iter(node.users))
    if norm.target is not aten.batch_norm.default or len(norm.users) != 1:
        return None
    back = next(iter(norm.users))
    op = _batch_norm(module, norm)
    if back.target not in _RESHAPES or _shape(back) != shape or op is None:
        return None
    return Element("channel", (node, norm, back), data, replace(op, dim=-1), main=1)


def _constant_channel(module, node: Node) -> Element | None:
    """mul/div/add/sub of a tensor by a constant that is per channel (or a scalar)."""
    if any(key != "alpha" or value != 1 for key, value in node.kwargs.items()) or len(node.args) != 2:
        return None
    for data_index in (0, 1):
        data, other = node.args[data_index], node.args[1 - data_index]
        constant = _constant_value(module, other)
        if not isinstance(data, Node) or constant is None or _constant_value(module, data) is not None:
            continue
        shape = _shape(data)
        if shape is None or _shape(node) != shape:
            return None
        per_channel = _per_channel(constant, shape)
        if per_channel is None:
            return None
        vector, dim = per_channel
        op = _arithmetic(node.target, vector, dim, constant_first=data_index == 1)
        return Element("channel", (node,), data, op) if op is not None else None
    return None


def _arithmetic(target, vector: torch.Tensor, dim: int, *, constant_first: bool) -> ChannelAffine | None:
    vector = vector.double()
    if target is aten.mul.Tensor:
        return ChannelAffine(vector, None, dim)
    if target is aten.add.Tensor:
        return ChannelAffine(None, vector, dim)
    if target is aten.sub.Tensor:  # c - x or x - c
        return ChannelAffine(-torch.ones_like(vector), vector, dim) if constant_first else ChannelAffine(None, -vector, dim)
    if target is aten.div.Tensor and not constant_first:
        return ChannelAffine(1.0 / vector, None, dim)
    return None


def _per_channel(constant: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, int] | None:
    """(values along the channel dim, dim as 1 or -1) when `constant` varies along dim 1 or the last dim only."""
    rank = len(shape)
    if constant.dim() > rank:
        return None
    aligned = (1,) * (rank - constant.dim()) + tuple(constant.shape)
    varying = [d for d, size in enumerate(aligned) if size != 1]
    if not varying:  # a scalar: the same factor on every channel of the usual channel dim
        dim = 1 if rank == 4 else -1
        return constant.reshape(()).expand(shape[dim]).clone(), dim
    if len(varying) != 1 or varying[0] not in (1, rank - 1) or aligned[varying[0]] != shape[varying[0]]:
        return None
    return constant.reshape(-1), -1 if varying[0] == rank - 1 else 1


def _constant_value(module, arg, depth: int = 0) -> torch.Tensor | None:
    """The value of an operand computed from parameters and literals only, else None."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return torch.tensor(float(arg), dtype=torch.float64)
    if not isinstance(arg, Node):
        return None
    if arg.op == "get_attr":
        return get_tensor(module, arg.target).detach()
    if arg.op != "call_function" or arg.target not in _CONSTANT_OPS or depth > 8:
        return None
    missing = []

    def value_of(item):
        if isinstance(item, Node):
            value = _constant_value(module, item, depth + 1)
            missing.extend([item] if value is None else [])
            return value
        return item

    args, kwargs = map_aggregate(arg.args, value_of), map_aggregate(arg.kwargs, value_of)
    if missing:
        return None
    with torch.no_grad():
        return arg.target(*args, **kwargs)


def _residual(node: Node, tails: dict[Node, Chain]) -> Element | None:
    """`add(x, tail)` where tail ends a chain that starts at x, in either operand order; an in-place add only
    where it writes into the tail (`out += identity`): one that writes into x (`x += f(x)`) changes x for every
    other reader of its memory (a view taken before), which the merged layer would no longer do."""
    if node.target not in _ADDS or len(node.args) != 2 or any(v != 1 for v in node.kwargs.values()):
        return None
    in_place = node.target is aten.add_.Tensor
    for data, skip in (node.args, node.args[::-1]) if not in_place else (node.args,):
        chain = tails.get(data) if isinstance(data, Node) else None
        if chain is not None and chain.input is skip and len(data.users) == 1 and _shape(data) == _shape(node):
            return Element("residual", (node,), data, None, skip)
    return None
