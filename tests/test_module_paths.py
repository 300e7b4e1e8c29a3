"""Module paths through a slice of a container (torch.export's `model.slice(None, -1, None).11`) named as the
module's own path in the model. Oracle: the paths a capture records without the slices."""

from __future__ import annotations

import torch
from torch import nn

from prunefx.graph import capture
from prunefx.graph.module_paths import name_sliced_modules


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.listed = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
        self.chain = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4)) for _ in range(4)))

    def forward(self, x):
        for layer in self.listed[1:3]:  # a ModuleList's slice counts from 0 again
            x = layer(x)
        for block in self.chain[2:]:  # a Sequential's slice keeps its keys
            x = block(x)
        return x


_AS_SLICES = {"listed.1": "listed.slice(1, 3, None).0", "listed.2": "listed.slice(1, 3, None).1",
              "chain.2": "chain.slice(2, None, None).2", "chain.2.0": "chain.slice(2, None, None).2.0",
              "chain.3": "chain.slice(2, None, None).3", "chain.3.0": "chain.slice(2, None, None).3.0"}


def _paths(program) -> list[list[str]]:
    return [[path for path, _ in node.meta["nn_module_stack"].values()]
            for node in program.graph.nodes if node.op == "call_function"]


def test_paths_through_slices_are_the_modules_own():
    model = Stacked()
    program = capture(model, torch.randn(2, 4))
    expected = _paths(program)
    assert {"listed.1", "listed.2", "chain.2.0", "chain.3.0"} <= {path for paths in expected for path in paths}
    for node in program.graph.nodes:  # as torch.export records them for some models (Ultralytics' RT-DETR)
        stack = node.meta.get("nn_module_stack") or {}
        node.meta["nn_module_stack"] = {key: (_AS_SLICES.get(path, path), kind) for key, (path, kind) in stack.items()}
    assert _paths(program) != expected
    name_sliced_modules(program.graph, model)
    assert _paths(program) == expected


def test_a_path_that_leads_nowhere_is_left_as_it_is():
    model = Stacked()
    program = capture(model, torch.randn(2, 4))
    node = next(node for node in program.graph.nodes if node.op == "call_function")
    node.meta["nn_module_stack"] = {"k": ("listed.slice(7, 9, None).0", nn.Linear)}
    name_sliced_modules(program.graph, model)
    assert node.meta["nn_module_stack"]["k"][0] == "listed.slice(7, 9, None).0"


class Blocks(nn.Sequential):
    """A Sequential of the user's whose constructor takes other arguments: slicing it calls that constructor."""

    def __init__(self, depth: int):
        super().__init__(*(nn.Linear(4, 4) for _ in range(depth)))


def test_a_slice_of_a_container_subclass_is_followed_without_its_constructor():
    model = nn.Sequential()
    model.add_module("blocks", Blocks(3))
    program = capture(model, torch.randn(2, 4))
    node = next(node for node in program.graph.nodes if node.op == "call_function")
    node.meta["nn_module_stack"] = {"k": ("blocks.slice(1, None, None).2", nn.Linear)}
    name_sliced_modules(program.graph, model)
    assert node.meta["nn_module_stack"]["k"][0] == "blocks.2"
