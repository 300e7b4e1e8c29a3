"""The likely reason, in words, why the write-back's proof fails (write_back.py): the refusal names it.

First a call that the Program makes with another operator than the module's code does (no attribute can give
that), then a size the channel removal rewrote that no attribute of its module holds.
"""

from __future__ import annotations

from torch import nn

from prunefx.interop.module_resizers import resize_attributes, resizer_for


def failure_hint(module: nn.Module, changes, replaced) -> str:
    """The likely reason, in words, should the proof fail ('' when none): first a call that the program makes
    with another operator (no attribute can help), then a rewritten size no attribute of its module held."""
    replaced = [pair for pair in replaced if _default_resized(module, pair[0].scope)]
    if replaced:
        dense, pruned = replaced[0]
        return (f"; the program replaced {dense.operator} {_arguments(dense)} in module '{dense.scope or '(model)'}' "
                f"by {pruned.operator} {_arguments(pruned)}, which that module's call cannot give")
    unmatched = [change for change in changes if _unmatched(module, change)]
    if not unmatched:
        return ""
    change = unmatched[0]
    sizes = ", ".join(f"{old} -> {new}" for old, new in change.pairs)
    return (f"; the program rewrote {change.operator} in module '{change.scope or '(model)'}' ({sizes}) and no "
            "attribute of that module holds the size (written in its forward, or computed: "
            "prunefx.register_module_resizer sets it)")


def _default_resized(module: nn.Module, scope: str) -> bool:
    """False for a module that a registered resizer sets (its replaced calls are that resizer's to handle)."""
    try:
        return resizer_for(module.get_submodule(scope)) is resize_attributes
    except AttributeError:
        return True


def _arguments(call) -> str:
    """A call's literal arguments after its input: '(4, 1)' for split(x, 4, 1)."""
    args = call.literals[0][1:]
    return repr(args[0] if len(args) == 1 else args).replace("None", "_")


def _unmatched(module: nn.Module, change) -> bool:
    """True when `change` is in a module left to the default resizer and no integer attribute of that module
    has one of the changed sizes as its value."""
    try:
        owner = module.get_submodule(change.scope)
    except AttributeError:
        return True
    if resizer_for(owner) is not resize_attributes:
        return False
    values = set()
    for value in vars(owner).values():
        if type(value) is int:
            values.add(value)
        elif isinstance(value, (list, tuple)):
            values.update(v for v in value if type(v) is int)
    return not any(old in values for old, _ in change.pairs)
