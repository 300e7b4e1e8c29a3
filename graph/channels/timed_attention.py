"""The attentions a latency table times (timed_layers.py), found in a captured graph in either spelling.

- fused: one scaled_dot_product_attention over q [N, heads, tokens, dim] and k, v [N, heads, keys, dim] (keys: as
  many tokens, or fewer, as PVT's and SegFormer's spatial reduction leaves), without causality, dropout or
  grouped heads (a custom scale does not change its time), and with at most a mask that broadcasts to its scores
  (MaxViT's relative-position bias), an additive term;
- spelled out: matmul(q, kᵀ), then only scalar scalings, views and additive terms (Swin's relative-position
  bias and shift mask) up to a softmax over the last dim, then (an inference dropout aside) matmul(·, v), with q, kᵀ
  and v of those shapes. The second product stands for the whole.

Either way the timers run k and v as one input, and q and v of one head dim, so attention whose q and v head dims
differ in the dense model is not timed; nor is attention whose heads are merged into the batch (3-D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunefx.graph.channels.attention_dims import PRODUCTS, SDPA
from prunefx.graph.counting import _shape

aten = torch.ops.aten
_SOFTMAX = {aten.softmax.int, aten._softmax.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_SCALINGS = {aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar}
_PASS_THROUGH = {aten.dropout.default, aten.clone.default, aten.alias.default}  # the identity in inference


@dataclass(frozen=True)
class TimedAttention:
    q: torch.fx.Node
    v: torch.fx.Node
    shape: tuple[int, ...]            # q's: [N, heads, tokens, dim] (k and v: `keys` tokens)
    fused: bool                       # one scaled_dot_product_attention, else spelled out
    products: tuple[torch.fx.Node, ...]  # the nodes whose MACs are the attention's
    score_terms: int = 0              # tensors added to the scores before the softmax
    keys: int = 0                     # the tokens k and v hold


def timed_attention(node: torch.fx.Node) -> TimedAttention | None:
    """The attention `node` computes, where it is one a table times (module docstring); else None."""
    if node.op != "call_function":
        return None
    if node.target is SDPA:
        return _fused(node)
    if node.target in PRODUCTS:
        return _spelled_out(node)
    return None


def _argument(node: torch.fx.Node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _fused(node: torch.fx.Node) -> TimedAttention | None:
    shapes = [_shape(arg) for arg in node.args[:3]]
    keys = _keys(*shapes) if len(shapes) == 3 else None
    if keys is None:
        return None
    mask = _argument(node, 3, "attn_mask", None)
    if mask is not None and not _broadcasts(_shape(mask), (*shapes[0][:3], keys)):
        return None
    plain = (not _argument(node, 4, "dropout_p", 0.0) and not _argument(node, 5, "is_causal", False)
             and not node.kwargs.get("enable_gqa", False))
    return TimedAttention(node.args[0], node.args[2], shapes[0], True, (node,), int(mask is not None),
                          keys) if plain else None


def _keys(q, k, v) -> int | None:
    """The tokens of k and v where q [N, heads, tokens, dim], and k and v [N, heads, keys, dim]; else None."""
    if q is None or len(q) != 4 or k is None or k != v or len(k) != 4 or (*k[:2], k[3]) != (*q[:2], q[3]):
        return None
    return k[2]


def _broadcasts(shape: tuple[int, ...] | None, scores: tuple[int, ...]) -> bool:
    """Whether a mask of `shape` broadcasts to the scores' shape without widening them."""
    if shape is None or len(shape) > len(scores):
        return False
    return all(size in (1, full) for size, full in zip(reversed(shape), reversed(scores)))


def _spelled_out(node: torch.fx.Node) -> TimedAttention | None:
    """`node` as the second product of a spelled-out attention, walking back to the first."""
    probabilities, v = node.args[:2]
    while isinstance(probabilities, torch.fx.Node) and probabilities.target in _PASS_THROUGH:
        probabilities = probabilities.args[0]
    if not isinstance(probabilities, torch.fx.Node) or probabilities.target not in _SOFTMAX:
        return None
    if probabilities.args[1] not in (-1, 3) or len(probabilities.users) != 1 or probabilities.kwargs:
        return None
    scores, terms = _scores_product(probabilities.args[0])
    if scores is None or scores.target not in PRODUCTS:
        return None
    q, k_t = scores.args[:2]
    transposed, shape = _shape(k_t), _shape(q)
    key_shape = None if transposed is None or len(transposed) != 4 else (*transposed[:2], transposed[3], transposed[2])
    keys = _keys(shape, key_shape, _shape(v))
    return None if keys is None else TimedAttention(q, v, shape, False, (scores, node), terms, keys)


def _scores_product(value) -> tuple[torch.fx.Node | None, int]:
    """The node before the softmax's views, scalings and additive terms, and how many terms were added."""
    terms = 0
    while isinstance(value, torch.fx.Node) and value.op == "call_function" and len(value.users) == 1:
        if value.target in _VIEWS:
            value = value.args[0]
        elif value.target in _SCALINGS and not isinstance(value.args[1], torch.fx.Node):
            value = value.args[0]
        elif value.target is aten.add.Tensor and len(value.args) == 2 and not value.kwargs:
            value, terms = _scores_side(value), terms + 1
        else:
            break
    return (value if isinstance(value, torch.fx.Node) else None), terms


def _scores_side(add: torch.fx.Node):
    """The operand of an add on the scores that carries them: the one whose shape is the sum's (a bias
    broadcasts up to it), the first where both are."""
    shapes = [_shape(arg) for arg in add.args]
    carried = [arg for arg, shape in zip(add.args, shapes) if shape is not None and shape == _shape(add)]
    return carried[0] if carried else None
