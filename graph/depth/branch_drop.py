"""Dropping whole residual branches: depth pruning for blocks that never become affine.

UPDP merges a block once its activations are identity, which needs every operator to be affine then.
ConvNeXtV2's GRN (a norm over the spatial dims), attention and gating multiplies are not, so such blocks
cannot be merged. A residual block `y = x + f(x)` can still leave the network whole: `y = x`, the branch
`f` and its parameters removed (stochastic depth at its limit; the trained network is known to tolerate
losing its least useful branches, and distillation recovers the rest). A block is droppable when its add
reads the fork itself (an identity shortcut) and the add's output has the fork's shape, so nothing else
in the graph changes. An operator that wrote in place into the add's output (ResNet's `relu(inplace=True)`
after `out += identity`) would write into the fork once it reads it, changing what the fork's other readers
see and what autograd saved: it becomes its out-of-place form (a block whose writer has none is not droppable).

The damage of dropping one block alone is measured as block_damage measures linearising one: the output
divergence on calibration batches (KL for logits, relative MSE otherwise); lower is safer to drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunefx.graph.depth.block_damage import damages
from prunefx.graph.depth.blocks import Block, find_blocks
from prunefx.graph.in_place_writes import out_of_place, writers_of


def _shape(node: torch.fx.Node):
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def droppable(block: Block, nodes: dict[str, torch.fx.Node]) -> bool:
    """A residual block whose add reads the fork itself and keeps its shape (see the module docstring)."""
    if block.kind != "residual" or block.fork is None or block.join is None:
        return False
    fork, join = nodes[block.fork], nodes[block.join]
    return (fork in join.all_input_nodes and _shape(fork) is not None and _shape(fork) == _shape(join)
            and all(out_of_place(writer.target) is not None for writer in writers_of(join)))


def droppable_blocks(program) -> list[Block]:
    """The blocks of `program` whose residual branch can be dropped, in graph order."""
    nodes = {node.name: node for node in program.graph.nodes}
    return [block for block in find_blocks(program.module) if droppable(block, nodes)]


def drop_branches(program, blocks: Sequence[Block]):
    """A copy of `program` in which every block of `blocks` is its shortcut: the add's users read the fork,
    and the branch, now unused, leaves the graph with its parameters (Program.recompile)."""
    candidate = program.clone()
    nodes = {node.name: node for node in candidate.graph.nodes}
    for block in sorted(blocks, key=lambda b: list(nodes).index(b.join)):
        join, fork = nodes[block.join], nodes[block.fork]
        for writer in writers_of(join):  # reading the fork now: it must not write into it
            writer.target = out_of_place(writer.target)
        join.replace_all_uses_with(fork)
        candidate.graph.erase_node(join)
        nodes[block.join] = fork  # a later block forking at this add forks at its input now
        # erased by hand, last first: dead-code elimination keeps random ops (an eval dropout is one) alive
        for name in reversed(block.nodes):
            if name not in (block.fork, block.join) and not nodes[name].users:
                candidate.graph.erase_node(nodes[name])
    candidate.recompile()
    return candidate


def drop_damage(program, blocks: Sequence[Block], batches: Sequence[tuple[torch.Tensor, ...]], *,
                progress: bool | None = None) -> dict[str, float]:
    """{block name: mean output divergence over `batches` when only that block's branch is dropped}: the add's
    users read the fork, as drop_branches rewrites it (block_damage.damages runs each from the dense run)."""
    nodes = {node.name: node for node in program.graph.nodes}
    candidates = {block.name: {nodes[block.join]: nodes[block.fork]} for block in blocks}
    return damages(program, candidates, batches, desc="scoring blocks to drop", progress=progress)
