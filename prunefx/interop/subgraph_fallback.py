"""Where the written-back model fails its proof: the Program's subgraph stands in for the modules whose own code
the pruning changed, then for each module whose forward still fails (the model itself last), with the sizes
matched by value set back where that is what was wrong; each attempt proven again, also on a batch of two,
or undone. Called by write_back.py once resizing alone did not prove itself."""

from __future__ import annotations

from torch import nn

from prunefx.graph import Program
from prunefx.interop.module_resizers import resize_attributes, resizer_for
from prunefx.interop.passed_tensors import CallWatcher
from prunefx.interop.set_back_sizes import SetBack
from prunefx.interop.subgraph_module import SubgraphError, put_back, replace_by_subgraph, stand_in
from prunefx.interop.write_back_proof import WriteBackError, batch_first_outputs, check_batch, verify_module


def own_code_changed(module: nn.Module, changes, replaced, cut: set[str]) -> list[str]:
    """Modules (deepest first) whose own code made an operator the channel removal rewrote or a constant it
    cut (`cut`), and whose sizes no registered resizer sets: those a subgraph may stand in for."""
    scopes = {dense.scope for dense, _ in replaced} | {change.scope for change in changes} | cut
    found = []
    for scope in scopes - {""}:
        try:
            owner = module.get_submodule(scope)
        except AttributeError:
            continue
        if resizer_for(owner) is resize_attributes:
            found.append(scope)
    return sorted(found, key=lambda scope: -scope.count("."))


def from_subgraphs(program: Program, watcher: CallWatcher, module: nn.Module, name: str, scopes: list[str],
                    error: WriteBackError, comparable: set[str], matched: dict[str, dict[str, object]],
                    class_kept: str | None) -> nn.Module:
    """Put the Program's subgraph in place of each module in `scopes` (prunefx/interop/subgraph_module.py),
    then of each module of the user's code whose forward raises (the model itself too: what is returned then
    stands in for it), and prove the result again, also on a
    batch of both inputs; else `error`, with why not. Where that fails and the Program's outputs have the batch
    first (so that the batch of two proves it), again with the windows or heads of every image batched together
    following the input's batch too. `watcher`: the calls of the user's dense model and the values of its
    capture, from which a subgraph's arguments are read (prunefx/interop/subgraph_arguments.py). A failing
    module that no subgraph can stand in for is tried with the sizes its attributes held in the dense model
    (`matched`: those set by matching values, by module path)."""
    attempts = (False, True) if batch_first_outputs(program) else (False,)
    failures = []
    for windows in attempts:
        sizes = SetBack(module, matched)
        try:
            return _made_from_subgraphs(program, watcher, module, name, scopes, error, windows, comparable, sizes,
                                        class_kept)
        except WriteBackError as failed:  # the modules it replaced are put back; the sizes it set back, here
            failures.append(failed)
            sizes.undo()
    raise failures[0]


def _made_from_subgraphs(program: Program, watcher: CallWatcher, module: nn.Module, name: str, scopes: list[str],
                         error: WriteBackError, windows: bool, comparable: set[str], sizes: SetBack,
                         class_kept: str | None) -> nn.Module:
    """One attempt of `from_subgraphs`, returning the model proven, or else, each module it replaced put back,
    raising; `comparable`: the modules the proof compares one by one; `sizes`: the attributes set by matching
    values, set back here where no subgraph stands in for their module (set_back_sizes.py), for the caller to
    undo; `class_kept`: why the model itself is not to be made from its subgraph (None: it may be)."""
    kept: list[str] = []  # a module left as it is may be right with its attributes: the proof decides
    root = module
    replaced: dict[str, tuple[nn.Module, nn.Module]] = {}  # path ('' the model) -> (the model it was put in, original)

    def make(scope: str | None) -> bool:
        nonlocal root
        if scope is None or scope in replaced or resizer_for(root.get_submodule(scope)) is not resize_attributes:
            return False
        if not scope and class_kept:
            kept.append(f"the model itself is not made from its subgraph: it keeps its class ({class_kept})")
            return False
        try:
            if scope:
                replaced[scope] = root, replace_by_subgraph(program, root, scope, windows=windows, watch=watcher)
            else:
                replaced[scope], root = (root, root), stand_in(program, root, scope, windows=windows, watch=watcher)
        except SubgraphError as reason:
            kept.append(f"module '{scope or '(model)'}' is not made from its subgraph: {reason}")
            return False
        return True

    def set_back(scope: str | None) -> bool:
        return scope not in replaced and sizes.next(scope)

    def unmake(scope: str | None) -> bool:
        """Where nothing else is left to try, a module made from its subgraph that fails (on the batch of two) put
        back, with its next size set back instead: a size matched by value alone may be another quantity that
        equals it (a ViT's image size beside its hidden size), where the module's own code was right."""
        if not scope or scope not in replaced or scope not in sizes.matched:
            return False
        tree, original = replaced.pop(scope)
        put_back(tree, scope, original)
        return sizes.next(scope)

    def mend(scope: str | None) -> bool:
        """The failing module made from its subgraph, else its next size set back; the model itself the other
        way round, so that it stays of the user's class where it can."""
        return (set_back(scope) or make(scope)) if scope == "" else (make(scope) or set_back(scope))

    for scope in scopes:
        make(scope)
    failing = getattr(error, "module_path", None)
    last, progress = error, mend(failing) or bool(replaced)
    while progress:
        try:
            verify_module(program, root, name, "", comparable)
            check_batch(program, root, name)
            return root
        except WriteBackError as failed:
            failing = getattr(failed, "module_path", None)
            last, progress = failed, mend(failing) or any(map(set_back, sizes.last())) or unmake(failing)
    changed = [f"{', '.join(scope or '(model)' for scope in replaced)} made from the pruned subgraph"] \
        if replaced else []
    changed += sizes.described()
    # each module put back in the model it was put in (a child of the model's stand-in is in that one's table only)
    for scope, (tree, original) in reversed(replaced.items()):
        if scope:
            put_back(tree, scope, original)
    tried_too = f"; nor with {' and '.join(changed)}: {last}" if changed else ""
    raise WriteBackError(f"{error}{tried_too}{''.join('; ' + line for line in kept[-1:])}") from error
