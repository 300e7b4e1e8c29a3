"""Change the static batch size of a Program (smaller only), e.g. train at 128, deploy at 1.

torch.export bakes the batch size into the graph: view/reshape/expand sizes carry it as a literal.
Rather than guessing which literal is a batch size, the batch is treated like a channel dim: the
dependency analysis runs with the inputs' dim 0 left free (graph/channels/analysis.py, free_batch),
so every batch item becomes a class, and removing the items past the new size rewrites every
literal that depends on it, with the same code that removes channels.

A model that mixes batch items (batch norm in training mode, window partitions that fold the batch
into another dim the way Swin does) ties the items to a fixed dim; then the batch cannot be changed
and the error says so: capture the model again at the wanted batch size.
"""

from __future__ import annotations

import numpy as np

from prunefx.graph.channels.analysis import analyse_channels
from prunefx.graph.channels.removal import remove_classes
from prunefx.graph.errors import PrunefxError
from prunefx.graph.program import Program, current_output_shapes


def rebatch(program: Program, batch_size: int) -> Program:
    """A copy of `program` that takes `batch_size` items per input; item i of its outputs equals item
    i of the original's (the example inputs keep their first `batch_size` items)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise PrunefxError(f"rebatch takes a whole number of items, not {batch_size!r:.40}")
    current = _batch_size(program)
    if not 1 <= batch_size <= current:
        raise PrunefxError(f"cannot rebatch {program.name} from {current} to {batch_size}: only a smaller batch "
                           f"(1 to {current}) can be cut out of a captured graph; capture again for a larger one")
    result = program.clone()
    if batch_size == current:
        return result
    if result.training:
        raise PrunefxError(f"{program.name} is in training mode, where batch norms mix batch items: call .eval() "
                           "before rebatching")
    analysis = analyse_channels(result.module, free_batch=True)
    removed = set()
    for node in _inputs(result):
        labels = analysis.node_labels[node][0]
        items = analysis.classes[labels]
        _check_items_free(program, node, labels, analysis)
        removed.update(int(c) for c in items[batch_size:])
    _drop_input_guards(result)
    remove_classes(result.module, analysis, removed)
    result.example_inputs = tuple(x[:batch_size] for x in result.example_inputs)
    result.recompile()
    result.output_shapes = current_output_shapes(result.module)
    return result


def _inputs(program: Program):
    return [node for node in program.graph.nodes if node.op == "placeholder"]


def _batch_size(program: Program) -> int:
    sizes = {int(x.shape[0]) for x in program.example_inputs if x.dim() > 0}
    if len(sizes) != 1:
        raise PrunefxError(f"{program.name}'s inputs do not share one batch size (dim 0 sizes {sorted(sizes)})")
    return sizes.pop()


def _free(items: np.ndarray, fixed_class: int) -> bool:
    return np.unique(items).size == items.size and fixed_class not in items


def _check_items_free(program: Program, node, labels: np.ndarray, analysis) -> None:
    """Every item must be its own class: neither tied to another item nor to a fixed dim."""
    if _free(analysis.classes[labels], analysis.fixed_class):
        return
    # Without the operators that pinned labels, were the items free? Then those operators are to blame.
    unblocked = analysis.unblocked_classes
    items = unblocked[labels]
    blockers = [] if not _free(items, int(unblocked[0])) else sorted(
        {b.operator for b in analysis.space.blockers if np.isin(unblocked[b.labels], items).any()})
    why = (f"operators {', '.join(blockers)} read across batch items" if blockers else
           "the graph mixes batch items or folds the batch into another dim (e.g. window partitions)")
    raise PrunefxError(f"cannot change the batch size of {program.name}: {why} (input {node.name}); "
                       "capture the model again at the batch size you need")


def _drop_input_guards(program: Program) -> None:
    """torch.export's input-shape guard asserts the old batch size; a re-export writes a new one."""
    for node in list(program.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            program.graph.erase_node(node)
