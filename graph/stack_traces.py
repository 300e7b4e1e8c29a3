"""torch.export records the Python stack of every node it traces (node.meta["stack_trace"]), at a cost of about
a tenth of an export. prunefx reads it in one place: the user's line to blame when a model's node depends on
tensor values (graph/data_dependent.py). A capture therefore runs without it and, only when it must refuse
the model, once more with it; a re-export of prunefx's own graph, whose stack is generated code, never has it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.fx.config


@contextlib.contextmanager
def stack_traces_off() -> Iterator[None]:
    """torch's tracers record no stack traces inside the block (torch.fx.config.do_not_emit_stack_traces)."""
    before = getattr(torch.fx.config, "do_not_emit_stack_traces", False)
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = before
