"""Operator sets, defined once: every module that asks "is this node a convolution?" imports them."""

from __future__ import annotations

import torch

aten = torch.ops.aten

# Forward convolutions. convolution.default carries a `transposed` flag (args[6]): callers that care check it.
CONVOLUTIONS = frozenset({
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding, aten.convolution.default,
})
TRANSPOSED_CONVOLUTIONS = frozenset({aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                     aten.conv_transpose3d.input})
MATRIX_PRODUCTS = frozenset({aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default,
                             aten.baddbmm.default, aten.addbmm.default})
LINEARS = frozenset({aten.linear.default})


def transposed_groups(node: torch.fx.Node) -> int | None:
    """The groups of a transposed convolution (its weight holds each group's outputs in dim 1); None for any other
    node."""
    if node.target in TRANSPOSED_CONVOLUTIONS:
        return int(node.args[6]) if len(node.args) > 6 else 1  # type: ignore[arg-type]  # groups: an int
    if node.target is aten.convolution.default and node.args[6]:
        return int(node.args[8])  # type: ignore[arg-type]
    return None
