"""The dense softmax scale kept by a written-back attention module whose head dim was pruned, fused path on.

timm-style attention (`fused_attn`, `scale`, `head_dim`) calls `F.scaled_dot_product_attention` with its
default scale 1/sqrt(head_dim) when fused, but the pruned Program keeps the dense scale. Rather than turn
the fused path off (exact but slow), the ratio `r = scale · sqrt(new head_dim)` goes into the queries, in
the first place linear in them (an affine `q_norm`, else the query rows of `q`/`q_proj`/`qkv`, with a
separate `q_bias` as in BEiT and EVA), and `scale` becomes the new default:
`softmax((q r) kᵀ / sqrt(d')) = softmax(q kᵀ · scale)` on both paths. The write-back proves it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn


def uses_timm_attention_convention(module: nn.Module) -> bool:
    """A boolean `fused_attn`, a float `scale` and an integer `head_dim`, set on the module itself."""
    attributes = vars(module)
    return type(attributes.get("fused_attn")) is bool and isinstance(attributes.get("scale"), float) \
        and type(attributes.get("head_dim")) is int


def keep_attention_scale(module: nn.Module, error: type[Exception]) -> None:
    """Fold the dense scale into `module`'s queries after its head dim changed (module docstring); raises
    `error` with a one-line reason where there is no place linear in the queries to fold it into."""
    attributes = vars(module)  # plain attributes (uses_timm_attention_convention checked their types)
    scale, head_dim = float(attributes["scale"]), int(attributes["head_dim"])
    ratio = scale * math.sqrt(head_dim)
    if math.isclose(ratio, 1.0, rel_tol=1e-12):
        return
    targets = _query_tensors(module)
    if isinstance(targets, str):
        raise error(f"{type(module).__name__} calls fused attention with the default scale of its pruned head dim "
                    f"and {targets}; prune with heads='whole' (head dims kept), or keep the program")
    with torch.no_grad():
        for tensor in targets:
            tensor.mul_(ratio)
    module.scale = head_dim ** -0.5
    module._prunefx_scale_folded = True  # unfolded_queries: a subgraph standing in for it keeps the dense scale


# Where keep_attention_scale folds the ratio: the module's query norm or projection, and a separate query bias.
_QUERY_PARTS = ("q_norm", "q", "q_proj", "qkv", "q_bias")


def unfolded_queries(module: nn.Module, read: Callable[[str], torch.Tensor]) -> dict[str, nn.Module | nn.Parameter]:
    """For a module whose queries keep_attention_scale scaled, about to be made from its pruned subgraph (whose
    attention keeps the dense scale itself): copies of its query parts holding the values `read` gives for
    their tensors (the Program's, by name in the module), by attribute; {} for any other module. Copies, so
    that the module itself, should it be put back, still holds its scaled queries."""
    if not vars(module).get("_prunefx_scale_folded"):
        return {}
    parts: dict[str, nn.Module | nn.Parameter] = {}
    for name in _QUERY_PARTS:
        part = getattr(module, name, None)
        if isinstance(part, nn.Parameter):
            parts[name] = nn.Parameter(read(name).detach().clone(), requires_grad=part.requires_grad)
        elif isinstance(part, nn.Module) and not isinstance(part, nn.Identity):
            copied = copy.deepcopy(part)
            with torch.no_grad():
                for tensor_name, tensor in [*copied.named_parameters(), *copied.named_buffers()]:
                    tensor.copy_(read(f"{name}.{tensor_name}"))
            parts[name] = copied
    return parts


def _query_tensors(module: nn.Module) -> list[torch.Tensor] | str:
    """The tensors that scale the queries linearly, or why there are none."""
    norm = getattr(module, "q_norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return f"its query norm {type(norm).__name__} has no affine weight to carry the dense scale"
        bias = getattr(norm, "bias", None)
        return [weight] + ([bias] if isinstance(bias, torch.Tensor) else [])
    for name in ("q", "q_proj"):
        layer = getattr(module, name, None)
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            return [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    qkv = getattr(module, "qkv", None)
    if isinstance(qkv, (nn.Linear, nn.modules.conv._ConvNd)) and qkv.weight.shape[0] % 3 == 0:
        rows = qkv.weight.shape[0] // 3
        tensors = [qkv.weight[:rows]] + ([qkv.bias[:rows]] if qkv.bias is not None else [])
        q_bias = getattr(module, "q_bias", None)
        return tensors + ([q_bias] if isinstance(q_bias, torch.Tensor) else [])
    return "no query projection (q, q_proj or qkv) to carry the dense scale"
