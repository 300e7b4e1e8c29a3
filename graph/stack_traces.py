"""torch.export records the Python stack of every node it traces (node.meta["stack_trace"]), at a cost of about
a tenth of an export. prunefx reads it in one place: the user's line to blame when a model's node depends on
tensor values (graph/data_dependent.py). A capture therefore runs without it and, only when it must refuse
the model, once more with it; a re-export of prunefx's own graph, whose stack is generated code, never has it.
torch 2.11 has no switch (its export tracer always records them): there they are dropped after the trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.fx.config

_SWITCH = "do_not_emit_stack_traces"


@contextlib.contextmanager
def stack_traces_off() -> Iterator[None]:
    """torch's tracers record no stack traces inside the block (torch.fx.config.do_not_emit_stack_traces), where
    this torch has the switch; where it has not, callers drop them with without_stack_traces."""
    if not hasattr(torch.fx.config, _SWITCH):
        yield
        return
    before = getattr(torch.fx.config, _SWITCH)
    setattr(torch.fx.config, _SWITCH, True)
    try:
        yield
    finally:
        setattr(torch.fx.config, _SWITCH, before)


def without_stack_traces(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`exported` with no node's stack trace, where this torch recorded them inside stack_traces_off."""
    if not hasattr(torch.fx.config, _SWITCH):
        for node in exported.graph.nodes:
            node.meta.pop("stack_trace", None)
    return exported
