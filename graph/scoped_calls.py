"""Operator calls of a graph grouped by the module that made them, and two graphs of the same model compared
call by call: which literal sizes differ (and in which module), which calls became another operator, and the
first call that differs.

The write-back of a pruned Program into the user's module (prunefx/interop/write_back.py) needs both: the literal
sizes the channel removal rewrote, found by aligning the pruned graph with a fresh capture of the dense
model, tell it which of a module's own attributes (head counts, head dims, hidden widths) fed them; and a
capture of the written-back module aligned with the pruned graph proves the two compute the same thing,
or names the module and operator where they part.

Calls are aligned by (module scope, operator, occurrence within that scope), not by node name: node names
change when a Program is saved and loaded, the scopes and their order do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScopedCall:
    scope: str         # the innermost module's path ('' for the model itself)
    operator: str      # e.g. 'aten.reshape.default'
    literals: tuple    # the call's arguments and keyword values with every tensor replaced by None
    node: torch.fx.Node


@dataclass(frozen=True)
class LiteralChange:
    scope: str
    operator: str
    pairs: tuple[tuple[int, int], ...]  # (size in the dense graph, size in the pruned graph), changed ones only
    # (dense, pruned) of each list of sizes that changed, whole: split sizes [32, 48, 48] -> [16, 32, 48], where
    # the pairs alone cannot tell which 48 stayed
    lists: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()


def scope_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def _literal(value):
    if isinstance(value, torch.fx.Node):
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_literal(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _literal(v)) for k, v in value.items()))
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value)
    return value


def scoped_calls(module: torch.fx.GraphModule) -> dict[tuple[str, str, int], ScopedCall]:
    """Every call_function node keyed by (scope, operator, occurrence in that scope)."""
    calls, seen = {}, {}
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        scope, operator = scope_of(node), str(node.target)
        index = seen.get((scope, operator), 0)
        seen[(scope, operator)] = index + 1
        calls[(scope, operator, index)] = ScopedCall(scope, operator, _literal((node.args, node.kwargs)), node)
    return calls


def _int_pairs(old, new) -> list[tuple[int, int]] | None:
    """The (old, new) integer pairs of two literals of the same form; None when their forms differ."""
    if isinstance(old, tuple) and isinstance(new, tuple):
        if len(old) != len(new):
            return None
        pairs = []
        for a, b in zip(old, new):
            inner = _int_pairs(a, b)
            if inner is None:
                return None
            pairs += inner
        return pairs
    if type(old) is int and type(new) is int:
        return [(old, new)]
    return [] if type(old) is type(new) else None


# Operators whose size argument lists the output's dims: a -1 in it stands for the output's size there.
_SIZE_OPERATORS = {"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.expand.default"}


def _inferred_sizes(call: ScopedCall, literals: tuple) -> tuple:
    """The call's literals with every -1 of a view/reshape/expand size replaced by the size the dense graph
    computed there: the head count that `view(b, n, -1, head_dim)` leaves implicit is still a width."""
    value = call.node.meta.get("val")
    (args, kwargs) = literals
    if call.operator not in _SIZE_OPERATORS or not isinstance(value, torch.Tensor) or len(args) < 2 \
            or not isinstance(args[1], tuple) or len(args[1]) != value.dim():
        return literals
    sizes = tuple(int(value.shape[i]) if s == -1 else s for i, s in enumerate(args[1]))
    return ((args[0], sizes, *args[2:]), kwargs)


def literal_changes(dense: torch.fx.GraphModule, pruned: torch.fx.GraphModule) -> list[LiteralChange]:
    """The integer literals the pruned graph spells differently from the dense one, call by call. A -1 in
    either graph's view/reshape/expand sizes counts as the size it inferred; any other -1 is no width
    and is left out."""
    pruned_calls = scoped_calls(pruned)
    changes = []
    for key, call in scoped_calls(dense).items():
        other = pruned_calls.get(key)
        if other is None:
            continue
        literals = _inferred_sizes(call, call.literals)
        # the pruned graph's -1 is inferred too: a view the removal left as captured (YOLO Detect's spatial -1)
        # changed no size, which read as (inferred, -1) would set an attribute equal to it (reg_max 16) to -1
        others = _inferred_sizes(other, other.literals)
        pairs = _int_pairs(literals, others) or []
        changed = tuple((a, b) for a, b in pairs if a != b and a != -1)
        if changed:
            changes.append(LiteralChange(call.scope, call.operator, changed, tuple(_changed_lists(literals, others))))
    return changes


def _changed_lists(old, new):
    """(old, new) of every list of two or more integers in two literals of the same form that differs."""
    if not (isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new)):
        return
    if len(old) > 1 and all(type(v) is int for v in (*old, *new)):
        if old != new:
            yield old, new
        return
    for a, b in zip(old, new):
        yield from _changed_lists(a, b)


def replaced_calls(dense: torch.fx.GraphModule, pruned: torch.fx.GraphModule) -> list[tuple[ScopedCall, ScopedCall]]:
    """Calls of the dense graph that the pruned graph makes with another operator in the same module, paired
    in order: a `split(4)` whose pieces the pruning made unequal is a `split_with_sizes([3, 1, 2])`, which the
    module's own call cannot give whatever its attributes."""
    dense_calls, pruned_calls = scoped_calls(dense), scoped_calls(pruned)
    new = [call for key, call in pruned_calls.items() if key not in dense_calls]
    pairs = []
    for key, call in dense_calls.items():
        match = next((other for other in new if other.scope == call.scope), None) if key not in pruned_calls else None
        if match is not None:
            new.remove(match)
            pairs.append((call, match))
    return pairs


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    if type(a) is int and type(b) is int and -1 in (a, b):  # "infer this size" matches any size
        return True
    return a == b


def first_difference(expected: torch.fx.GraphModule, actual: torch.fx.GraphModule) -> str | None:
    """Where `actual` first computes something else than `expected`, in words ('module X: operator Y
    (arguments ... in the program, ... here)'), or None when every call matches."""
    mine = scoped_calls(actual)
    theirs = scoped_calls(expected)
    for key, call in theirs.items():
        other = mine.get(key)
        where = f"module '{call.scope or '(model)'}'"
        if other is None:
            return f"{where}: operator {call.operator} of the program is not called"
        if not _same(call.literals, other.literals):
            return (f"{where}: operator {call.operator} gets {_shown(other.literals)} instead of the program's "
                    f"{_shown(call.literals)}")
    extra = next((call for key, call in mine.items() if key not in theirs), None)
    if extra is not None:
        return f"module '{extra.scope or '(model)'}': operator {extra.operator} is not in the program"
    return None


def _shown(literals) -> str:
    text = repr(literals).replace("None", "_")
    return text if len(text) <= 120 else text[:117] + "..."
