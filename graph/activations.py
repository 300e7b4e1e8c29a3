"""Reading intermediate tensors of a graph over calibration batches.

Two helpers shared by the passes that need activations rather than gradients (batch-norm
recalibration, second-order compensation of removed channels):
- `calibration_inputs` turns user data into a list of input tuples that fit the captured graph;
- `tap_nodes` builds a module that computes only the named nodes and returns them.

passes/training/engine.py has `tap_outputs` for the same purpose while training (it also returns the model's
output); this one lives in graph/ so that graph-level algorithms can use it, and drops every node the
tapped tensors do not depend on, so reading an early layer does not run the whole network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.in_place_writes import as_computed
from prunefx.graph.input_batches import as_program_inputs
from prunefx.graph.model_state import random_state_kept
from prunefx.graph.placement import module_device


def calibration_inputs(example_inputs: Sequence[torch.Tensor], data: Iterable, *, max_batches: int | None = None,
                       what: str = "calibration") -> list[tuple[torch.Tensor, ...]]:
    """The input tuples of the first `max_batches` items of `data` (all of them when None).

    An item is a tensor (one input), a tuple of input tensors, or an `(inputs, labels)` pair; the labels
    are dropped. Every batch must have the example inputs' shapes: the captured graph is static.
    """
    if data is None:
        raise PrunefxError(f"{what} needs data: a list of input batches or (inputs, labels) pairs")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise PrunefxError(f"{what}: max_batches must be a positive integer, not {max_batches!r}")
    items = itertools.islice(data, max_batches) if max_batches is not None else data
    expected = [tuple(t.shape) for t in example_inputs]
    # in the Program's precision: data sets give float32 images, a half-precision Program takes half; torch's
    # generator as found afterwards: a DataLoader draws its workers' base seed from it on every iter()
    with random_state_kept(example_inputs):
        batches = [as_program_inputs(_inputs_of(item, expected, index, what), example_inputs)
                   for index, item in enumerate(items)]
    if not batches:
        raise PrunefxError(f"{what} got no batches: give at least one input batch")
    return batches


def _shapes(value) -> list[tuple[int, ...]] | None:
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return [tuple(t.shape) for t in value]
    return None


def _inputs_of(item, expected: list[tuple[int, ...]], index: int, what: str) -> tuple[torch.Tensor, ...]:
    if _shapes(item) == expected:  # a tensor or a tuple of inputs
        return (item,) if isinstance(item, torch.Tensor) else tuple(item)
    if isinstance(item, (tuple, list)) and len(item) == 2 and _shapes(item[0]) == expected:  # (inputs, labels)
        return (item[0],) if isinstance(item[0], torch.Tensor) else tuple(item[0])
    found = _shapes(item) or _shapes(item[0] if isinstance(item, (tuple, list)) and item else None)
    raise PrunefxError(f"{what} batch {index} has input shapes {found or type(item).__name__}, but the program was "
                       f"captured for {expected}; give batches of that size (capture with the calibration batch size)")


def tap_nodes(module: torch.fx.GraphModule, names: Sequence[str]) -> torch.fx.GraphModule:
    """A module sharing `module`'s tensors whose forward takes the graph inputs (flat) and returns the
    tuple of the tensors computed by the nodes `names` (as they computed them, whatever an in-place operator
    wrote into them later: graph/in_place_writes.py), and nothing else."""
    nodes = {node.name: node for node in module.graph.nodes}
    missing = [name for name in names if name not in nodes]
    if missing:
        raise PrunefxError(f"no node named {', '.join(map(repr, missing))} in the graph")
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    graph.graph_copy(module.graph, copies)
    graph.output(tuple(as_computed(module.graph, graph, copies, [nodes[name] for name in names])))
    tapped = torch.fx.GraphModule(module, graph)
    tapped.graph.eliminate_dead_code()
    tapped.recompile()
    return tapped


def run_tapped(tapped: torch.fx.GraphModule, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run a `tap_nodes` module on one batch, moved to the device of its tensors, without gradients."""
    device = module_device(tapped)
    with torch.no_grad():
        return tuple(tapped(*(t.to(device) for t in batch)))


def within_budget(items: Sequence, cost: Callable[[object], int], budget: int) -> Iterator[list]:
    """`items` in consecutive groups whose summed `cost` (bytes) stays within `budget`; an item dearer
    than the budget alone forms its own group. Bounds the memory of statistics gathered per group."""
    chunk, size = [], 0
    for item in items:
        price = cost(item)
        if chunk and size + price > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += price
    if chunk:
        yield chunk
