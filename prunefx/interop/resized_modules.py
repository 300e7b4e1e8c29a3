"""The sizes each module of the written-back copy takes, and its resizer run with them.

The literal sizes the channel removal rewrote (graph/scoped_calls.py) are grouped by the module whose code
spelled them: under any of its names (a module shared by several) and, for a module whose forward never runs, in
the calls that ran one of its methods. Each module's resizer (interop/module_resizers.py) then sets its
attributes; the write-back (interop/write_back.py) proves the result.
"""

from __future__ import annotations

import torch
from torch import nn

from prunefx.graph import Program
from prunefx.graph.scoped_calls import scope_of
from prunefx.interop.module_resizers import ResizeError, resize_attributes, resizer_for
from prunefx.interop.write_back_proof import WriteBackError


def method_scopes(dense: Program, module: nn.Module) -> dict[int, set[str]]:
    """For each module left to the default resizer that no operator is called in (its forward never runs) but
    whose own tensors an operator reads: the scopes of those operators, by the module's id. Its code ran
    there as a method its parent called (timm's RelPosMlp.get_bias), so the sizes rewritten there may be its
    attributes'. Tensors handed to a nested graph (`torch.no_grad()` blocks) are not read there."""
    def owner_of(path: str) -> nn.Module | None:
        try:
            return module.get_submodule(path)
        except AttributeError:
            return None

    graphs = [each.graph for each in dense.module.modules() if isinstance(each, torch.fx.GraphModule)]
    called = {id(owner_of(path)) for graph in graphs for node in graph.nodes
              for path, _ in (node.meta.get("nn_module_stack") or {}).values()}
    found: dict[int, set[str]] = {}
    for node in dense.graph.nodes:
        owner = owner_of(str(node.target).rpartition(".")[0]) if node.op == "get_attr" else None
        if owner is None or id(owner) in called or resizer_for(owner) is not resize_attributes:
            continue
        for user in node.users:
            if isinstance(user.target, torch._ops.OpOverload):
                found.setdefault(id(owner), set()).add(scope_of(user))
    return found


def resize_modules(module: nn.Module, dense: Program, changes, name: str
                   ) -> tuple[list[WriteBackError], dict[str, dict[str, object]]]:
    """Run every module's resizer with the literal sizes rewritten (`changes`, between `dense`, the dense
    capture, and the pruned Program) in the operators it called, under any of its names or through a method
    (`method_scopes`). A registered resizer's refusal is final; the default resizer's are returned (the module's
    subgraph may stand in), with the attributes it set and their dense values, by module path."""
    scopes_of_methods = method_scopes(dense, module)
    by_scope: dict[str, list] = {}
    for change in changes:
        by_scope.setdefault(change.scope, []).append(change)
    aliases: dict[int, list[str]] = {}  # a module shared under several names is called under any of them
    for path, submodule in module.named_modules(remove_duplicate=False):
        aliases.setdefault(id(submodule), []).append(path)
    unresized, matched = [], {}
    for path, submodule in module.named_modules():  # lazily: a module a resizer puts in is resized too
        resizer = resizer_for(submodule)
        # one put in by a resizer (a Detect head's one-to-one branch copied anew) has its path alone
        names = aliases.get(id(submodule), [])
        scopes = {*(names if path in names else [path]), *scopes_of_methods.get(id(submodule), ())}
        own = [change for scope in sorted(scopes) for change in by_scope.get(scope, [])]
        pairs = [pair for change in own for pair in change.pairs]
        try:
            if resizer is resize_attributes:  # it also takes lists of sizes whole
                dense_values = resize_attributes(submodule, pairs, [listed for change in own for listed in change.lists])
                if dense_values:
                    matched[path] = dense_values
            else:
                resizer(submodule, pairs)
        except ResizeError as reason:
            error = WriteBackError(f"cannot write {name} back: module '{path or '(model)'}': {reason}")
            if resizer is not resize_attributes:
                raise error from reason
            unresized.append(error)
    return unresized, matched
