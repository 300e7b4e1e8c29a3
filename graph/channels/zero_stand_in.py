"""Whether an element-wise operator keeps zero channels zero, found by running it rather than by a list of
operators: the operator runs on a tiny stand-in of its operands (each dim of 1 or 2 elements), those that
carry the dim zero there and the others (a broadcast map, a mask, operands already nonzero) not, once positive
and once negative. Used by graph/channels/zero_channels.py."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Copies, casts, checks and quantizers (fq(0) = 0 at any scale) compute nothing from a zero (and some would
# refuse a stand-in of another shape): their output is nonzero only where an operand is.
COPIES = {"fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine", "clone", "contiguous", "detach",
          "alias", "_to_copy", "to", "type_as", "lift_fresh_copy", "_assert_tensor_metadata", "dropout", "dropout_",
          "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_", "feature_alpha_dropout",
          "feature_alpha_dropout_"}

NonzeroAlong = Callable[[torch.fx.Node, int, int], bool]  # (operand, output dim, output rank) -> may be nonzero


def keeps_zero(node: torch.fx.Node, dim: int, nonzero_along: NonzeroAlong) -> bool:
    """Whether the node's output is zero along `dim` where its operands carrying `dim` are (the others nonzero).
    An operator the stand-in cannot run is taken not to (inexact is the safe answer)."""
    rank = node.meta["val"].dim()
    if operator_name(node) in COPIES:
        return not any(nonzero_along(arg, dim, rank) for arg in node.all_input_nodes)
    # the other operands positive, then negative: minimum(0, x) and clamp(max=x) are 0 only for x > 0
    return all(_zero_with(node, dim, rank, sign, nonzero_along) for sign in (1.0, -1.0))


def _zero_with(node: torch.fx.Node, dim: int, rank: int, sign: float, nonzero_along: NonzeroAlong) -> bool:
    generator = torch.Generator().manual_seed(0)

    def stand_in(arg: torch.fx.Node):
        value = arg.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise TypeError("an operand without a known tensor value")
        small = tuple(1 if size == 1 else 2 for size in value.shape)
        if _carries(value, dim, rank) and not nonzero_along(arg, dim, rank):
            return torch.zeros(small, dtype=value.dtype)
        if value.dtype == torch.bool:
            return torch.rand(small, generator=generator) < 0.5
        return (sign * (torch.rand(small, generator=generator) + 0.5)).to(value.dtype)

    try:
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), stand_in)
        result = node.target(*args, **kwargs)
    except Exception:
        return False
    if not isinstance(result, torch.Tensor):
        return False
    result = result.to(torch.float64)
    return not (result.abs().gt(0).any().item() or result.isnan().any().item())


def _carries(value: torch.Tensor, dim: int, rank: int) -> bool:
    """Whether an operand of an element-wise operator (right-aligned, as broadcasting goes) has `dim` whole."""
    own = dim - (rank - value.dim())
    return 0 <= own < value.dim() and value.shape[own] > 1


def operator_name(node: torch.fx.Node) -> str:
    target = node.target
    return target._schema.name.removeprefix("aten::") if isinstance(target, torch._ops.OpOverload) else ""
