"""The pruned Program handed back as the user's own module: `to_module(program, model)`.

The graph is the truth; the module is a view of it that must prove itself. A copy of the user's model gets
the Program's tensors by state-dict name and every size attribute its forward reads (module_resizers.py,
found through graph/scoped_calls.py); it must match the Program's outputs on the example and a random input
and capture again to the same widths. Where that fails, the Program's subgraph of the offending modules'
code takes their place (subgraph_module.py) and the proof runs again; else one PrunefxError names the
module. See docs/your-model.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunefx.graph import Program, capture
from prunefx.graph.attributes import delete_unused_tensors
from prunefx.graph.errors import PrunefxError
from prunefx.graph.model_state import hook_state_kept, random_state_kept
from prunefx.graph.scoped_calls import literal_changes, replaced_calls
from prunefx.graph.training_flags import module_modes, set_module_modes
from prunefx.interop.dead_branches import dead_branch_tensors, eliminate_dead_code
from prunefx.interop.hf_config import is_hf_model, update_config
from prunefx.interop.module_resizers import resize_attributes, resizer_for
from prunefx.interop.passed_tensors import CallWatcher
from prunefx.interop.proof_by_module import agreeing
from prunefx.interop.pruned_attention import off_nested_tensors
from prunefx.interop.put_tensors import put_tensors
from prunefx.interop.resized_modules import resize_modules
from prunefx.interop.set_back_sizes import SetBack
from prunefx.interop.subgraph_module import SubgraphError, put_back, replace_by_subgraph, stand_in
from prunefx.interop.unread_tensors import changed_widths, unread_tensors, warn_unread
from prunefx.interop.write_back_hint import failure_hint
from prunefx.interop.write_back_precision import in_program_precision
from prunefx.interop.write_back_proof import (
    TOLERANCE,
    WriteBackError,
    batch_first_outputs,
    check_batch,
    program_tensors,
    verify_module,
)

__all__ = ["TOLERANCE", "WriteBackError", "to_module"]


def to_module(program: Program, model: nn.Module, *, config: bool = True, same_class: bool = False) -> nn.Module:
    """A copy of `model` (the module `program` was captured from, before pruning) holding the Program's
    pruned tensors, with every size attribute updated, verified against the Program (module docstring).

    With `config` (default), a Hugging Face model's `config` is updated to the pruned widths too, so that
    `save_pretrained`/`from_pretrained` rebuild it (prunefx/interop/hf_config.py); where the config cannot hold the
    widths (global ranking gives every layer its own), WriteBackError says so. The copy takes the Program's
    floating dtype where each holds one (a bfloat16 Program of a float32 model). Library classes whose width
    attributes the generic matching misses: `prunefx.register_module_resizer(cls, fn)`.
    Where the model's own forward spells a width that pruning changed (`x.view(-1, 16 * 5 * 5)`), the model
    itself is made from its subgraph: a SubgraphModule standing in for its class is returned, with the same
    children, tensors and plain attributes, not the class's methods; with `same_class` (and for a Hugging Face
    model with `config`), WriteBackError instead.
    Raises WriteBackError (a PrunefxError) with a one-line reason where the result cannot be proven."""
    if not isinstance(program, Program) or not isinstance(model, nn.Module):
        raise WriteBackError(f"to_module(program, model) takes a prunefx Program and the torch.nn.Module it was "
                             f"captured from, not {type(program).__name__} and {type(model).__name__}")
    name = program.name
    module = in_program_precision(copy.deepcopy(model).eval(), program, name)
    # The copy shares the closures of the user's hooks: what the proofs' runs leave there is put back, and the
    # random state they draw from, however they end.
    with hook_state_kept(module), random_state_kept([*module.parameters(), *program.module.parameters()]):
        return _written_back(program, model, module, name, config, same_class)


def _written_back(program: Program, model: nn.Module, module: nn.Module, name: str, config: bool,
                  same_class: bool) -> nn.Module:
    inputs = program.example_inputs
    try:
        dense = capture(copy.deepcopy(module), inputs, name=name)
    except PrunefxError as error:
        raise WriteBackError(f"cannot write {name} back: the dense model does not capture ({error})") from error
    read = {str(node.target) for node in dense.graph.nodes if node.op == "get_attr" and node.users}  # dead code too
    full, dead = eliminate_dead_code(dense.module, _state_names(model))
    delete_unused_tensors(dense.module)
    _check_nothing_dropped(program, dense, name)
    widths = changed_widths(program_tensors(program), program_tensors(dense))
    built = _built_in_forward(dense, model)
    comparable = agreeing(dense, module, TOLERANCE)  # the modules the proof compares one by one
    # the branches the model calls and ignores, cut as the live ones were
    cut = dead_branch_tensors(program, full, dead, name) if full is not None else {}
    put_tensors(module, {**_program_values(program, module, name, built), **cut})
    changes = literal_changes(dense.module, program.module)
    unresized, matched = resize_modules(module, dense, changes, name)
    off_nested_tensors(module)
    replaced = replaced_calls(dense.module, program.module)
    hint = failure_hint(module, changes, replaced)
    set_by_config: list[str] = []
    if config:  # before the proof: the config may move an attention's scale into its query weights
        set_by_config = update_config(module, model, name, unread_tensors(module, read, widths))
    try:
        if unresized:  # a subgraph may still stand in for that module
            raise unresized[0]
        verify_module(program, module, name, hint, comparable)
    except WriteBackError as error:
        if set_by_config:  # attributes the config's class set, which the captured call reads after all
            raise WriteBackError(f"cannot write {name} back with its config: with {', '.join(set_by_config)} set as "
                                 f"the class built from it sets them, the module does not compute the pruned program "
                                 f"({error}); keep the module without its config (prunefx.to_module(..., "
                                 "config=False), prunefx prune --module)") from error
        scopes = _own_code_changed(module, changes, replaced, _cut_constants(program, dense, built))
        # with a config, its fields were chosen for the matched attributes: none is set back then; and the model
        # is to keep its class, whose from_pretrained reads the config
        with_config = config and is_hf_model(module)
        class_kept = "same_class" if same_class else "its config" if with_config else None
        module = _from_subgraphs(program, CallWatcher(model, inputs, dense.module, scopes), module, name, scopes,
                                 error, comparable, {} if with_config else matched, class_kept)
    module.train(model.training)  # also the graphs' flags of the subgraphs standing in for modules
    set_module_modes(module, module_modes(model), model.training)  # each layer's own, as in the user's model
    warn_unread(module, read, widths, name)
    return module


def _own_code_changed(module: nn.Module, changes, replaced, cut: set[str]) -> list[str]:
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


def _from_subgraphs(program: Program, watcher: CallWatcher, module: nn.Module, name: str, scopes: list[str],
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
    """One attempt of `_from_subgraphs`, returning the model proven, or else, each module it replaced put back,
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


# A model whose eval-mode forward stores what it computes and reads the store on later calls, and whose train() does
# not drop the store (graph/mode_caches.py), was captured reading a constant where its forward now reads its tensors.
_CACHED = ("or the model read a cache it fills in eval mode when it was captured and not now, or the other way "
           "round (prunefx drops a cache a module's train() drops before each capture; clear any other first)")


def _check_nothing_dropped(program: Program, dense: Program, name: str) -> None:
    """Every tensor the model's forward reads must still be in the Program: a pass that merged one into
    another (fold_batchnorm, merge_blocks) leaves the model's layer computing on a tensor the Program lost."""
    ours, theirs = program_tensors(program), program_tensors(dense)
    _check_same_model(ours, theirs, name)
    dropped = sorted(theirs.keys() - ours.keys())
    if dropped:
        raise WriteBackError(f"cannot write {name} back: the program no longer has '{dropped[0]}', which the "
                             f"model's forward reads ({len(dropped)} such tensors; a pass that merges layers ran, "
                             f"e.g. fold_batchnorm or merge_blocks: write back before it; {_CACHED}; or the program "
                             "was captured from another model)")


def _check_same_model(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], name: str) -> None:
    """No pass changes how many dimensions a tensor has (merges may grow a kernel, so sizes are no sign): a
    tensor of the model's name with other dimensions, or no name in common at all, means another model."""
    shared = ours.keys() & theirs.keys()
    if not shared:
        raise WriteBackError(f"cannot write {name} back: the program was captured from another model (none of "
                             "its tensors has a name of the model's); pass the model it was captured from")
    for key in sorted(shared):
        mine, dense = ours[key].shape, theirs[key].shape
        if len(mine) != len(dense):
            raise WriteBackError(
                f"cannot write {name} back: the program was captured from another model ('{key}' is "
                f"{list(mine)} in the program, {list(dense)} in the model); pass the model it was captured from")


def _state_names(model: nn.Module) -> set[str]:
    """The model's tensors by name: parameters, buffers, and plain tensor attributes (`self.shift = torch.zeros(...)`,
    which the capture reads as constants of the attribute's name and pruning cuts like a buffer)."""
    state = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state.update(name for name, _ in model.named_buffers(remove_duplicate=False))
    state.update(f"{path}.{attribute}" if path else attribute
                 for path, owner in model.named_modules(remove_duplicate=False)
                 for attribute, value in vars(owner).items()
                 if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter))
    return state


def _built_in_forward(dense: Program, model: nn.Module) -> set[str]:
    """The dense capture's tensors that are no state of the model: constants its forward builds (a shifted
    window's attention mask), which the written-back forward builds again; the proof checks that it does."""
    return set(program_tensors(dense)) - _state_names(model)


def _cut_constants(program: Program, dense: Program, built: set[str]) -> set[str]:
    """The modules whose forward builds a constant (a Python list of channel indices made a tensor) that the
    removal cut: their own code would build it whole again."""
    ours, theirs = program_tensors(program), program_tensors(dense)
    return {target.rpartition(".")[0] for target in built & ours.keys() & theirs.keys()
            if ours[target].shape != theirs[target].shape}


def _program_values(program: Program, module: nn.Module, name: str, built: set[str]) -> dict[str, torch.Tensor]:
    """The Program's tensors that are the model's state, by name; refused where the model has no such tensor."""
    values = {}
    for target, tensor in program_tensors(program).items():
        if target in built:
            continue
        owner_path, _, attribute = target.rpartition(".")
        try:
            owner = module.get_submodule(owner_path)
        except AttributeError:
            owner = None
        if not isinstance(getattr(owner, attribute, None) if owner is not None else None, torch.Tensor):
            raise WriteBackError(f"cannot write {name} back: the program holds tensor '{target}', which the model "
                                 "has no place for (a pass that adds tensors ran, e.g. fold_batchnorm or "
                                 f"merge_blocks: write back before it; {_CACHED})")
        values[target] = tensor
    return values
