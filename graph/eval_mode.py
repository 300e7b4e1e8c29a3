"""Eval mode for a while: a Program, a GraphModule or an nn.Module evaluated, then every batch norm and
dropout given back the mode it had (a model fine-tuned with some batch norms frozen keeps them frozen)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from prunefx.graph.program import Program


@contextlib.contextmanager
def evaluating(model: Program | torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode inside the block, each of its modes as it was after it. A graph module's mode lives
    in its nodes, which only Program flips."""
    if isinstance(model, torch.fx.GraphModule):
        model = Program(model, (), name="model")
    if isinstance(model, Program):
        with model.evaluating():
            yield
        return
    modes = [(module, module.training) for module in model.modules()]
    # a graph inside (prunefx.detectors.GraphPart): its flags live in its nodes, each put back as it was (its
    # train() would set them all alike, a frozen batch norm's too)
    graphs = [(module.program, module.program.modes()) for module in model.modules()
              if isinstance(getattr(module, "program", None), Program)]
    model.eval()
    try:
        yield
    finally:
        model.train(modes[0][1])  # through the model's own train(), which some override
        for module, mode in modes:
            module.training = mode
        for program, found in graphs:
            program.restore_modes(found)
