"""MACs count the nodes whose results are used: a branch nothing reads (the one-to-many head an end-to-end YOLO
computes and drops in export mode) is neither in the ONNX file nor in a pass's rewritten graph. Counted, it
made the dense side of a fraction larger than the one remove_channels cut to (YOLOv10n: 0.39 for 0.5 asked)."""

import numpy as np
import torch
import torch.nn as nn

from prunefx.graph import capture, count, node_macs
from prunefx.graph.channels.groups import find_channel_groups
from prunefx.graph.channels.plan_cost import CostModel


class DeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(8, 4)
        self.dropped = nn.Linear(8, 16)

    def forward(self, x):
        return self.used(x)


def add_a_dead_branch(program) -> torch.fx.Node:
    """Gives the Program `dropped` applied to the input and its result read by nothing (capture itself
    removes such nodes from the traced code, the graph may still hold them after a rewrite or a load); the node."""
    graph = program.graph
    x = next(node for node in graph.nodes if node.op == "placeholder" and node.name == "x")
    weight = next(node for node in graph.nodes if node.target == "dropped.weight")
    with graph.inserting_after(weight):
        dead = graph.call_function(torch.ops.aten.linear.default, (x, weight))
    dead.meta["val"] = torch.empty(2, 16)
    return dead


def test_a_branch_nothing_reads_is_not_counted():
    program = capture(DeadBranch().eval(), torch.randn(2, 8))
    macs = count(program).macs
    assert macs == 2 * 8 * 4  # the used linear only: batch x in x out
    dead = add_a_dead_branch(program)
    assert node_macs(dead) == 2 * 8 * 16 and not dead.users  # there, and it would count
    assert count(program).macs == macs


def test_a_plan_is_priced_on_the_nodes_count_counts():
    """remove_channels prices its plans with the same nodes: its prediction for removing nothing is count()'s."""
    program = capture(DeadBranch().eval(), torch.randn(2, 8))
    add_a_dead_branch(program)
    analysis = find_channel_groups(program.module).analysis
    model = CostModel(program.module, analysis)
    assert model.cost(np.zeros(model.classes, dtype=bool)).macs == count(program).macs == 2 * 8 * 4
