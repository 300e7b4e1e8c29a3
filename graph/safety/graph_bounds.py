"""What a loaded graph is believed about: only what shape propagation computes from the graph itself.

A `.pt2` records every node's output shape, but those records are claims of whoever wrote the file: a
file that claims a conv output of 80x80 instead of 8x8 would make `inspect` report 100x the MACs. So a
loaded Program's shapes are recomputed with fake tensors (no memory is allocated, no kernel runs), and
every value the graph would compute is held to MAX_TENSOR_ELEMENTS before anything runs it: a 20 KB file
can hold `aten.ones([3, 2**29])`, 6 GiB when run.
"""

from __future__ import annotations

import math

import torch

from prunefx.graph.errors import ProgramFileError, first_line, printable
from prunefx.graph.safety.tensor_bound import MAX_TENSOR_ELEMENTS
from prunefx.graph.shape_propagation import propagate_shapes


def recompute_shapes(module: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], where: str) -> None:
    """Replace every node's recorded shape by the one propagated from `inputs` through the graph, and
    refuse a graph any of whose values would exceed MAX_TENSOR_ELEMENTS."""
    try:
        propagate_shapes(module, inputs)
    except Exception as error:  # a graph whose recorded shapes do not follow from its operators
        raise ProgramFileError(f"{where}: its graph does not run on its own inputs: {first_line(error)}") from None
    for node in module.graph.nodes:
        for value in _tensors(node.meta.get("val")):
            elements = math.prod(int(size) for size in value.shape)
            if elements > MAX_TENSOR_ELEMENTS:
                raise ProgramFileError(
                    f"{where}: node '{printable(node.name)[:60]}' ({printable(str(node.target))[:60]}) would make a "
                    f"{'x'.join(str(int(s)) for s in value.shape)} tensor, more than the limit of 2**28 elements "
                    "(refused before running)")


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []
