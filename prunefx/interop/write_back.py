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
from prunefx.graph.placement import module_device, move_program
from prunefx.graph.scoped_calls import literal_changes, replaced_calls
from prunefx.graph.training_flags import module_modes, set_module_modes
from prunefx.interop.dead_branches import dead_branch_tensors, eliminate_dead_code
from prunefx.interop.hf_config import is_hf_model, update_config
from prunefx.interop.passed_tensors import CallWatcher
from prunefx.interop.proof_by_module import agreeing
from prunefx.interop.pruned_attention import off_nested_tensors
from prunefx.interop.put_tensors import put_tensors
from prunefx.interop.resized_modules import resize_modules
from prunefx.interop.subgraph_fallback import from_subgraphs, own_code_changed
from prunefx.interop.unread_tensors import changed_widths, unread_tensors, warn_unread
from prunefx.interop.write_back_hint import failure_hint
from prunefx.interop.write_back_precision import in_program_precision, plain_tensor_attributes
from prunefx.interop.write_back_proof import (
    TOLERANCE,
    WriteBackError,
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
    floating dtype where each holds one (a bfloat16 Program of a float32 model), and stays on the model's device
    (a Program pruned on a GPU writes back into a model on the CPU). Library classes whose width
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
    program = _on_the_models_device(program, model)
    module = in_program_precision(copy.deepcopy(model).eval(), program, name)
    # The copy shares the closures of the user's hooks: what the proofs' runs leave there is put back, and the
    # random state they draw from, however they end.
    with hook_state_kept(module), random_state_kept([*module.parameters(), *program.module.parameters()]):
        return _written_back(program, model, module, name, config, same_class)


def _on_the_models_device(program: Program, model: nn.Module) -> Program:
    """`program`, or a copy of it on the model's device where they differ (pruned on a GPU, the user's model on
    the CPU): the model's copy gets the Program's tensors on the device it computes on, and the proofs run there."""
    device = module_device(model)
    if module_device(program.module) == device:
        return program
    return move_program(program.clone(), device)


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
        scopes = own_code_changed(module, changes, replaced, _cut_constants(program, dense, built))
        # with a config, its fields were chosen for the matched attributes: none is set back then; and the model
        # is to keep its class, whose from_pretrained reads the config
        with_config = config and is_hf_model(module)
        class_kept = "same_class" if same_class else "its config" if with_config else None
        module = from_subgraphs(program, CallWatcher(model, inputs, dense.module, scopes), module, name, scopes,
                                 error, comparable, {} if with_config else matched, class_kept)
    module.train(model.training)  # also the graphs' flags of the subgraphs standing in for modules
    set_module_modes(module, module_modes(model), model.training)  # each layer's own, as in the user's model
    warn_unread(module, read, widths, name)
    return module


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
    state.update(f"{path}.{attribute}" if path else attribute for path, _, attribute, _ in plain_tensor_attributes(model))
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
