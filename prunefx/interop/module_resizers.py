"""Size attributes of a module, set again from its pruned tensors: one resizer per module class.

A resizer `fn(module, changes)` runs once the module holds its pruned tensors; `changes` lists the
(dense, pruned) literal sizes the channel removal rewrote in operators this module called itself (under any
of its names, for a module shared by several, or in the call that ran one of its methods). The
standard torch.nn layers' resizers read their tensors' shapes; every other module gets `match_attributes`,
which updates the integer attributes that held one of those sizes, after a list attribute that an operator took
whole (split sizes) is set whole from that operator's pruned list. A library registers its own with
`prunefx.register_module_resizer` (the most specific class wins). What a resizer sets is never trusted:
the write-back proves the module or refuses. See docs/your-model.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from prunefx.interop.attention_scale import keep_attention_scale, uses_timm_attention_convention
from prunefx.interop.pruned_attention import PrunedMultiheadAttention, narrow_heads, projection_widths

Changes = list[tuple[int, int]]
Resizer = Callable[[nn.Module, Changes], None]

_RESIZERS: dict[type, Resizer] = {}


class ResizeError(Exception):
    """A resizer found attributes it cannot set consistently (turned into a PrunefxError by the caller)."""


def register_module_resizer(cls: type, resizer: Resizer) -> None:
    """Use `resizer(module, changes)` for modules of class `cls` and its subclasses (see the module docstring)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_resizer needs a torch.nn.Module class, not {cls!r}")
    if not callable(resizer):
        raise TypeError("register_module_resizer needs a callable resizer(module, changes)")
    _RESIZERS[cls] = resizer


def resizer_for(module: nn.Module) -> Resizer:
    for cls in type(module).__mro__:
        if cls in _RESIZERS:
            return _RESIZERS[cls]
    return resize_attributes


def resize_attributes(module: nn.Module, changes: Changes, lists=()) -> dict[str, object]:
    """The default resizer: `match_attributes`, lists of sizes that an operator took whole set whole first
    (`listed_sizes`; `lists`: (dense, pruned) lists of sizes of the module's own calls); and for attention modules
    written to timm's convention (a boolean `fused_attn`, a float `scale`), when the head dim changed, the dense
    scale folded into the queries so that the fused path, left as it was, computes what the pruned Program
    computes (prunefx/interop/attention_scale.py). The attributes it set, with their dense values, where setting
    them back undoes it (no scale folded): a size matched by its value alone may be another quantity that
    happens to equal it (a window of 4 beside 4 heads), which the write-back then tries as it was."""
    dense = dict(vars(module))
    listed = listed_sizes(module, lists)
    updated = match_attributes(module, changes, skip=listed.keys())
    for name, value in listed.items():
        setattr(module, name, value)
    if "head_dim" in updated and uses_timm_attention_convention(module):
        keep_attention_scale(module, ResizeError)
        return {}
    return {name: dense[name] for name in [*updated, *listed]}


def match_attributes(module: nn.Module, changes: Changes, skip=()) -> list[str]:
    """Set every integer attribute of `module` (and every tuple/list of integers) whose value is a dense size
    in `changes` to the pruned size, but those named in `skip`; returns the names set. An attribute whose value
    maps to two different pruned sizes is ambiguous: ResizeError."""
    mapping: dict[int, set[int]] = {}
    for old, new in changes:
        mapping.setdefault(old, set()).add(new)
    updated = []
    for name, value in list(vars(module).items()):
        if name.startswith("_") or name == "training" or name in skip:
            continue
        new = _mapped(value, mapping, name, module)
        if new is not None and new != value:
            setattr(module, name, new)
            updated.append(name)
    return updated


def listed_sizes(module: nn.Module, lists) -> dict[str, list | tuple]:
    """The new value of every list or tuple attribute of integers of `module` that equals, whole and in order, a
    list of sizes an operator it called took in the dense graph (`lists`: (dense, pruned) pairs): that list in
    the pruned graph. Size by size matching cannot place a list whose equal sizes were cut apart (split sizes
    [32, 48, 48] -> [16, 32, 48]); a list that became two different lists is ambiguous: ResizeError."""
    found = {}
    for name, value in vars(module).items():
        if name.startswith("_") or not isinstance(value, (tuple, list)) or len(value) < 2 \
                or not all(type(v) is int for v in value):
            continue
        targets = {pruned for dense, pruned in lists if tuple(dense) == tuple(value)}
        if len(targets) > 1:
            raise ResizeError(f"attribute '{name}' of {type(module).__name__} was {list(value)}, which became "
                              f"{' and '.join(str(list(t)) for t in sorted(targets))} in different operators")
        if targets:
            found[name] = _rebuilt(value, targets.pop())
    return found


def _rebuilt(value: list | tuple, items) -> list | tuple:
    """`items` in the sequence type of `value` (a namedtuple's fields given one by one)."""
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def _mapped(value, mapping: dict[int, set[int]], name: str, module: nn.Module):
    if type(value) is int:
        targets = mapping.get(value)
        if not targets:
            return None
        if len(targets) > 1:
            raise ResizeError(f"attribute '{name}' of {type(module).__name__} was {value}, which became "
                              f"{' and '.join(map(str, sorted(targets)))} in different operators")
        return next(iter(targets))
    if isinstance(value, (tuple, list)) and value and all(type(v) is int for v in value):
        mapped = [_mapped(v, mapping, name, module) for v in value]
        if all(m is None for m in mapped):
            return None
        return _rebuilt(value, [v if m is None else m for v, m in zip(value, mapped)])
    return None


# --- the standard layers: widths read from their own tensors -------------------------------------------
def _conv(module: nn.modules.conv._ConvNd, changes: Changes) -> None:
    weight = module.weight
    per_group = module.out_channels // module.groups if not module.transposed else module.in_channels // module.groups
    depthwise = module.groups > 1 and module.groups == (module.in_channels if not module.transposed else module.out_channels)
    lead = weight.shape[0]  # out channels (in channels for a transposed convolution)
    if depthwise:  # the rewrite keeps one group per channel: the multiplier stays
        module.groups = lead // per_group
    if module.transposed:
        module.in_channels, module.out_channels = lead, weight.shape[1] * module.groups
    else:
        module.out_channels, module.in_channels = lead, weight.shape[1] * module.groups


def _linear(module: nn.Linear, changes: Changes) -> None:
    module.out_features, module.in_features = module.weight.shape


def _norm_with_running_stats(module: nn.modules.batchnorm._NormBase, changes: Changes) -> None:
    tensor = module.running_mean if module.running_mean is not None else module.weight
    if tensor is not None:
        module.num_features = tensor.shape[0]
    else:
        match_attributes(module, changes)


def _layer_norm(module: nn.LayerNorm, changes: Changes) -> None:
    if module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    else:
        match_attributes(module, changes)


def _group_norm(module: nn.GroupNorm, changes: Changes) -> None:
    if module.weight is not None:
        module.num_channels = module.weight.shape[0]
    else:
        match_attributes(module, changes)


def _embedding(module: nn.Embedding, changes: Changes) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape


def _multihead_attention(module: nn.MultiheadAttention, changes: Changes) -> None:
    """nn.MultiheadAttention computes its heads at its input width (embed_dim = num_heads x head_dim, asserted
    by its forward), and it calls attention with the default scale of its head dim, where the program keeps the
    dense one. Where the two widths stayed equal (uniform ranking) it stays a MultiheadAttention and the ratio of
    the scales goes into the query rows of the input projection (softmax(q k^T s) = softmax((q s/s') k^T s'));
    else it becomes a PrunedMultiheadAttention (interop/pruned_attention.py), which holds heads of their own
    width and the dense scale."""
    heads = {new for old, new in changes if old == module.num_heads} or {module.num_heads}
    if len(heads) > 1:
        raise ResizeError(f"num_heads of MultiheadAttention became {sorted(heads)} in different operators")
    num_heads = heads.pop()
    dense_head_dim = getattr(module, "scale_head_dim", module.head_dim)  # whose scale the program keeps
    weight = module.in_proj_weight if module.in_proj_weight is not None else module.q_proj_weight
    embed_dim = weight.shape[1]
    if set(projection_widths(module)) != {embed_dim} or embed_dim % num_heads:
        try:
            return narrow_heads(module, num_heads, dense_head_dim)
        except ValueError as reason:
            raise ResizeError(f"nn.MultiheadAttention with input width {embed_dim} and heads of width "
                              f"{projection_widths(module)[0]} in all: {reason}; keep the program") from reason
    module.num_heads, module.embed_dim, module.head_dim = num_heads, embed_dim, embed_dim // num_heads
    module.kdim, module.vdim = (embed_dim, embed_dim) if module.in_proj_weight is not None else \
        (module.k_proj_weight.shape[1], module.v_proj_weight.shape[1])
    ratio = math.sqrt(module.head_dim / dense_head_dim)
    if isinstance(module, PrunedMultiheadAttention):
        module.scale_head_dim = dense_head_dim
    elif ratio != 1.0:
        query = module.in_proj_weight[:embed_dim] if module.in_proj_weight is not None else module.q_proj_weight
        bias = module.in_proj_bias[:embed_dim] if module.in_proj_bias is not None else None
        with torch.no_grad():
            for tensor in (query, bias):
                if tensor is not None:
                    tensor.mul_(ratio)


def _recurrent(module: nn.RNNBase, changes: Changes) -> None:
    module.input_size = module.weight_ih_l0.shape[1]
    module.hidden_size = module.weight_hh_l0.shape[1] if not module.proj_size else module.hidden_size
    module._init_flat_weights()  # the layer keeps its own list of its weights: rebuild it from the new ones


for _cls, _fn in ((nn.modules.conv._ConvNd, _conv), (nn.RNNBase, _recurrent), (nn.Linear, _linear),
                  (nn.modules.batchnorm._NormBase, _norm_with_running_stats), (nn.LayerNorm, _layer_norm),
                  (nn.GroupNorm, _group_norm), (nn.Embedding, _embedding),
                  (nn.MultiheadAttention, _multihead_attention)):
    register_module_resizer(_cls, _fn)

