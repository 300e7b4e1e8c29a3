"""A module whose own forward cannot express its pruned widths, made again from the pruned Program.

A module's forward may fix a width that the channel removal changed: two equal halves of a `chunk`, a
split at sizes it stored (`split_indexes`), a reshape from stored sizes. Where setting its attributes
cannot make it compute what the Program computes, the write-back (prunefx/interop/subgraph_fallback.py) puts in
its place, under the same qualified name, a module whose graph is the Program's operators of that module's
own code (subgraph_cut.py), calling the module's children as modules. The children are the very same objects,
so parameter names, state-dict keys and `named_modules` stay; they keep their own eager forward (batch norm
trains, dropout drops), and the module's own operators (split, cat, view, add) do not depend on the mode.
Its input is a tensor or a list of tensors (DPT's reassemble stage), each entry read from it. Besides it, it may
read further activations and tensors of other modules that its caller passes in, and call its children with
several (passed_tensors.py). It returns its tensor, or its tensors paired by their values with those of the
dense call, in the structure its original returned, and refuses a call passing other plain arguments than the
model's (subgraph_call.py). What is made is proven by the write-back like everything else; where the module's
code cannot be cut out of the graph this way (tensors it passes in or out that cannot be told apart, its own
dropout), SubgraphError says why.
"""

from __future__ import annotations

import importlib
import types

from torch import fx, nn

from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.interop.attention_scale import unfolded_queries
from prunefx.interop.passed_tensors import CallWatcher, PassedTensor, taken
from prunefx.interop.subgraph_call import CalledWith, ReturnedLike, besides_input, input_list, input_name
from prunefx.interop.subgraph_children import prefix_of
from prunefx.interop.subgraph_cut import SubgraphError, called_in, graph_form, module_graph

__all__ = ["SubgraphError", "SubgraphModule", "put_back", "replace_by_subgraph", "stand_in"]

_NAMED = object()  # SubgraphModule.forward's input, when its caller passes it by name


# A module's hooks, those around its call and its state dict: SubgraphModule keeps the original's.
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


class SubgraphModule(nn.Module):
    """A module running the Program's operators of another module's own code (module docstring).

    It holds that module's children, tensors and plain attributes (a library's bookkeeping, such as
    Ultralytics' `f`, `i`, `type`) under the same names; its forward is the Python that torch.fx writes
    for the graph, kept as source so that the module deep-copies and pickles (torch.save) like any other."""

    _input_name: str | None = None  # defaults for a module pickled before it kept these
    _returned: ReturnedLike | None = None
    _called_with: CalledWith | None = None
    _entries: int | None = None

    def __init__(self, owner: nn.Module, graph: fx.Graph, passed: list[PassedTensor] = (),
                 returned: ReturnedLike | None = None, called_with: CalledWith | None = None,
                 entries: int | None = None):
        super().__init__()
        for table in ("_modules", "_parameters", "_buffers"):  # the originals, in their order, containers kept
            getattr(self, table).update(getattr(owner, table))
        for table in _HOOKS:  # the user's hooks on the module it stands in for (features, logging) still run
            getattr(self, table).update(getattr(owner, table))
        self._is_full_backward_hook = owner._is_full_backward_hook  # which kind its backward hooks are
        self._non_persistent_buffers_set = set(owner._non_persistent_buffers_set)  # its state dict's keys as the original's
        for name, value in vars(owner).items():
            if not name.startswith("_") and name not in vars(self):
                setattr(self, name, value)
        self.train(owner.training)
        self.source_module = f"{type(owner).__module__}.{type(owner).__qualname__}"
        self._passed = list(passed)  # the tensors it reads from its call besides the input, in order
        self._input_name = input_name(owner)  # a caller may name the input (PVT's encoder: `pixel_values=`)
        self._returned = returned  # the structure the original returned its tensor in (subgraph_call.py)
        self._called_with = called_with  # the plain arguments of the call it was made from
        self._entries = entries  # where its input is a list of tensors, how many
        code = graph.python_code(root_module="self")
        self._source = code.src
        self._globals = {name: value.__name__ if isinstance(value, types.ModuleType) else value
                         for name, value in code.globals.items()}
        self._compile()

    def _compile(self) -> None:
        namespace = {name: importlib.import_module(value) if isinstance(value, str) else value
                     for name, value in self._globals.items()}
        exec(compile(self._source, f"<subgraph of {self.source_module}>", "exec"), namespace)
        self._forward = namespace["forward"]

    def forward(self, x=_NAMED, /, *args, **kwargs):
        if x is _NAMED:
            if self._input_name not in kwargs:
                raise TypeError(f"the stand-in for {self.source_module} is called without its input "
                                f"'{self._input_name}'")
            x = kwargs.pop(self._input_name)
        if self._entries is not None and not (input_list(x) and len(x) == self._entries):
            raise SubgraphError(f"the stand-in for {self.source_module} takes a list of {self._entries} tensors as "
                                f"its input, not {_described(x)}")
        try:
            passed = taken(self._passed, args, kwargs, self.source_module)
        except ValueError as reason:
            raise SubgraphError(str(reason)) from None
        different = self._called_with.differs(args, kwargs) if self._called_with is not None else None
        if different:  # the graph holds the model's call's as constants
            raise SubgraphError(f"the stand-in for {self.source_module} computes the model's call, and here "
                                f"{different}")
        output = self._forward(self, x, *passed)
        return output if self._returned is None else self._returned.around(output)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_forward"]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._compile()

    def extra_repr(self) -> str:
        return f"in place of {self.source_module}"


def _described(value) -> str:
    return f"a {type(value).__name__} of {len(value)}" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"


def replace_by_subgraph(program: Program, model: nn.Module, path: str, *, windows: bool = False,
                        watch: CallWatcher | None = None) -> nn.Module:
    """Put in `model` at `path` (not the model itself: see `stand_in`) the module made from the Program's
    operators of that module (module docstring). Returns the module it replaced."""
    owner = model.get_submodule(path)
    put_back(model, path, stand_in(program, model, path, windows=windows, watch=watch))
    return owner


def stand_in(program: Program, model: nn.Module, path: str, *, windows: bool = False,
             watch: CallWatcher | None = None) -> SubgraphModule:
    """The module made from the Program's operators of `model`'s module at `path` ('' for the model itself),
    not yet put in its place; `windows` and `watch`: see subgraph_cut.module_graph."""
    owner = model.get_submodule(path)
    graph, reads = module_graph(program, path, owner, windows, watch)
    dropped = _uncalled_children(graph, watch, path, owner)
    if dropped:
        raise SubgraphError(f"its code calls '{dropped[0]}', whose result the model does not use, so the program "
                            "holds none of it (pruning drops such code, as an auxiliary head's in eval mode): made "
                            "from the program, it would never call it")
    aliases = [name for name, each in model.named_modules(remove_duplicate=False) if each is owner and name != path]
    for alias in [alias for alias in aliases if any(called_in(node, alias) for node in program.graph.nodes)]:
        # one graph stands in for every call: each must be that graph (a literal the proof's inputs miss)
        if graph_form(module_graph(program, alias, owner, windows, watch)[0]) != graph_form(graph):
            raise SubgraphError(f"the model calls it as '{alias}' too, with other sizes or arguments")
    dense_call = watch.call(path) if watch else None
    outputs = graph.output_node().args[0]
    replacement = SubgraphModule(owner, graph, reads, *(besides_input(dense_call, owner, len(outputs) if isinstance(
        outputs, tuple) else 1) if dense_call else ()))
    try:
        parts = unfolded_queries(owner, lambda target: get_tensor(program.module, prefix_of(path) + target))
    except AttributeError as missing:
        raise SubgraphError(f"the program holds none of its query tensors ({missing})") from None
    for name, part in parts.items():
        setattr(replacement, name, part)  # its graph keeps the dense attention scale: queries as the Program's
    _lend_constants(replacement, graph, program, prefix_of(path))
    return replacement


def _uncalled_children(graph: fx.Graph, watch: CallWatcher | None, path: str, owner: nn.Module) -> list[str]:
    """The modules holding tensors that the dense call of module `path` called and its graph does not (neither
    them nor a module around them): their results were unused, and their hooks and widths would be left behind."""
    called = watch.called(path) if watch else None
    prefix, calls = prefix_of(path), [str(node.target) for node in graph.nodes if node.op == "call_module"]
    inside = [name[len(prefix):] for name in sorted(called or ()) if name != path]
    return [name for name in inside if _holds_tensors(owner.get_submodule(name))
            and not any(name == call or name.startswith(f"{call}.") for call in calls)]


def _holds_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def put_back(model: nn.Module, path: str, module: nn.Module) -> None:
    """`module` at `path` in `model`, in place of the one there, and at every other name that one has (a module
    shared under several names stays one module)."""
    current = model.get_submodule(path)
    places = [name for name, each in model.named_modules(remove_duplicate=False) if each is current]
    for place in places:
        parent_path, _, name = place.rpartition(".")
        setattr(model.get_submodule(parent_path), name, module)


def _lend_constants(replacement: nn.Module, graph: fx.Graph, program: Program, prefix: str) -> None:
    """The tensors the graph reads that the module lacks: constants its forward built on every call (a Python
    list made a tensor), which the Program holds as removal left them; unsaved, as the list they stand for."""
    for node in graph.nodes:
        if node.op == "get_attr" and not _has_attribute(replacement, str(node.target)):
            owner_path, _, name = str(node.target).rpartition(".")
            constant = get_tensor(program.module, prefix + str(node.target)).detach().clone()
            replacement.get_submodule(owner_path).register_buffer(name, constant, persistent=False)


def _has_attribute(module: nn.Module, target: str) -> bool:
    owner_path, _, name = target.rpartition(".")
    try:
        return hasattr(module.get_submodule(owner_path), name)
    except AttributeError:
        return False

