"""A module whose own forward cannot express its pruned widths, made again from the pruned Program.

A module's forward may fix a width that the channel removal changed: two equal halves of a `chunk`, a
split at sizes it stored (`split_indexes`), a reshape from stored sizes. Where setting its attributes
cannot make it compute what the Program computes, the write-back (prunefx/interop/write_back.py) puts in
its place, under the same qualified name, a torch.fx GraphModule whose graph is the Program's operators of
that module's own code, calling the module's children as modules. The children are the very same objects,
so parameter names, state-dict keys and `named_modules` stay; they keep their own eager forward (batch norm
trains, dropout drops), and the module's own operators (split, cat, view, add) do not depend on the mode.
Besides its input it may read further activations and tensors of other modules that its caller passes in, and
call its children with several (passed_tensors.py). It returns its tensor in the structure its original
returned, and refuses a call passing other plain arguments than the model's (subgraph_call.py).
What is made is proven by the write-back like everything else; where the module's code cannot be cut out
of the graph this way (several inputs or outputs, its own dropout), SubgraphError says why.
"""

from __future__ import annotations

import importlib
import types

import torch
from torch import fx, nn

from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.graph.training_flags import DROPOUTS, training_dropout
from prunefx.interop.attention_scale import unfolded_queries
from prunefx.interop.passed_tensors import CallWatcher, PassedTensor, passed_tensors, taken
from prunefx.interop.subgraph_arguments import bound_inputs, takes
from prunefx.interop.subgraph_batch import NEW_FROM_SHAPE, batch_of, follow_input_batch
from prunefx.interop.subgraph_call import CalledWith, ReturnedLike, besides_input, input_name
from prunefx.interop.subgraph_children import call_child, outside_inputs, prefix_of

# Operators whose behaviour depends on the training mode: baked into the graph, they would not train.
_MODAL = ("dropout", "batch_norm", "rrelu")
# Fused attention with its dropout probability baked in: exact in both modes where that is 0 and the module
# holds no dropout that training would apply (timm passes `attn_drop.p` only while training).
_ATTENTION = "scaled_dot_product"
_NAMED = object()  # SubgraphModule.forward's input, when its caller passes it by name


class SubgraphError(Exception):
    """The module's own code cannot be cut out of the Program as a forward (turned into a WriteBackError)."""


def _position(node: fx.Node, path: str) -> tuple[str, tuple[str, str] | None] | None:
    """For a node called inside module `path`: (that call's stack key, (key, path) of the child call one level
    deeper or None when `path`'s own code made it); None when the node is outside `path`."""
    entries = list((node.meta.get("nn_module_stack") or {}).items())
    for index, (key, (fqn, _)) in enumerate(entries):
        if fqn == path:
            deeper = entries[index + 1:]
            return key, ((deeper[0][0], deeper[0][1][0]) if deeper else None)
    return None


def _region(program: Program, path: str) -> dict[fx.Node, tuple[str, str] | None]:
    region, calls = {}, set()
    for node in program.graph.nodes:
        found = _position(node, path) if node.op == "call_function" else None
        if found is not None:
            calls.add(found[0])
            region[node] = found[1]
    if not region:
        raise SubgraphError("the program calls no operator in it")
    if len(calls) > 1:
        raise SubgraphError(f"the model calls it {len(calls)} times")
    return region


def _graph(program: Program, path: str, owner: nn.Module, windows: bool,
           watch: CallWatcher | None) -> tuple[fx.Graph, list[PassedTensor]]:
    """The Program's operators of module `path`'s own code, its children's calls as call_module; with `windows`,
    sizes that are multiples of the batch follow the input's (subgraph_batch.py). What its call passes
    besides its input (other modules' tensors, further activations) and what it passes its children are read
    off a call of the dense model that `watch` watches (passed_tensors.py)."""
    region = _region(program, path)
    prefix = prefix_of(path)
    dropout_free = _dropout_free(owner, {child[1][len(prefix):] for child in region.values() if child})
    inside = set(region)
    inputs = outside_inputs(list(region), inside)
    outputs = [node for node in region if any(user not in inside for user in node.users)]
    if not inputs or len(outputs) != 1:
        raise SubgraphError(f"its operators take {len(inputs)} tensors from outside and give {len(outputs)}, "
                            "not one or more and one")
    groups: dict[tuple[str, str], list[fx.Node]] = {}
    for node, child in region.items():
        if child is not None:
            groups.setdefault(child, []).append(node)
    foreign = {value.target: value for node in region if region[node] is None for value in node.all_input_nodes
               if value.op == "get_attr" and not str(value.target).startswith(prefix)}
    call = watch.call(path) if watch and (foreign or len(inputs) > 1 or takes(owner) > 1) else None
    example = program.example_inputs[0] if program.example_inputs else None
    images = example.shape[0] if isinstance(example, torch.Tensor) and example.dim() else None
    try:
        x, activations = bound_inputs(inputs, call, images, watch.values if watch else _no_values)
    except ValueError as reason:
        raise SubgraphError(str(reason)) from None
    graph = fx.Graph()
    env = {x: graph.placeholder("x")}
    bound = []
    for target, (name, position) in (passed_tensors(call, [str(t) for t in foreign]) if foreign and call else {}).items():
        bound.append(PassedTensor(name, position, tuple(get_tensor(program.module, target).shape)))
        env[foreign[target]] = graph.placeholder(f"passed_{name}")
    for node, each in activations:
        bound.append(each)
        if each.read:
            env[node] = graph.placeholder(f"passed_{each.name}")
    # values computed from the input, or made to follow its batch (else the module's constants)
    from_input = {x, *(node for node, each in activations if each.batched)}
    batches = (batch_of(x), images)
    for node in region:
        if node.target not in NEW_FROM_SHAPE and any(value in from_input for value in node.all_input_nodes):
            from_input.add(node)
        child = region[node]
        if child is None:
            _copy_own(graph, node, env, prefix, dropout_free)
            if follow_input_batch(graph, env[node], node, env[x], batches, from_input, windows):
                from_input.add(node)
        elif node is groups[child][-1]:  # the child's whole call, at its last operator
            try:
                call_child(graph, groups[child], child[1], path, env, owner, watch)
            except ValueError as reason:
                raise SubgraphError(str(reason)) from None
    graph.output(env[outputs[0]])
    return graph, bound


def _dropout_free(owner: nn.Module, called: set[str]) -> bool:
    """Whether `owner` holds no dropout that its own code could apply: those inside the children it calls as
    modules are theirs, applied by their own forward in either mode (a position MLP's dropout); a dropout it
    calls itself counts (its rate may also be the fused attention's)."""
    return all(layer.p == 0 for name, layer in owner.named_modules() if isinstance(layer, nn.modules.dropout._DropoutNd)
               and not any(name.startswith(f"{child}.") for child in called))


def _dropout_p(node: fx.Node) -> float:
    """The dropout probability of a fused attention call in training: an eval graph holds 0 and keeps that one
    aside (graph/training_flags.py)."""
    held = float(node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0))
    return max(held, training_dropout(node) or 0.0)


def _no_dropout(node: fx.Node) -> bool:
    """A dropout of probability 0 (torchvision's Swin passes its attention dropout of 0 to F.dropout): the
    identity in either mode."""
    return node.target in DROPOUTS and len(node.args) > 1 and type(node.args[1]) in (int, float) and node.args[1] == 0


def _copy_own(graph: fx.Graph, node: fx.Node, env: dict, prefix: str, dropout_free: bool) -> None:
    attention = _ATTENTION in str(node.target)
    modal = any(word in str(node.target) for word in _MODAL) and not _no_dropout(node)
    if attention and not (dropout_free and _dropout_p(node) == 0) or modal:
        raise SubgraphError(f"its own code calls {node.target}, which would not follow the training mode")
    for value in node.all_input_nodes:
        if value.op == "get_attr" and value not in env:
            if not str(value.target).startswith(prefix):
                raise SubgraphError(f"its own code reads '{value.target}', a tensor of another module")
            env[value] = graph.get_attr(str(value.target)[len(prefix):])
    try:
        env[node] = graph.node_copy(node, lambda value: env[value])
    except KeyError as error:
        raise SubgraphError("its own operators read a value inside a child's call") from error


# A module's hooks, those that run around its call: SubgraphModule takes the same call.
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


class SubgraphModule(nn.Module):
    """A module running the Program's operators of another module's own code (module docstring).

    It holds that module's children, tensors and plain attributes (a library's bookkeeping, such as
    Ultralytics' `f`, `i`, `type`) under the same names; its forward is the Python that torch.fx writes
    for the graph, kept as source so that the module deep-copies and pickles (torch.save) like any other."""

    _input_name: str | None = None  # defaults for a module pickled before it kept these
    _returned: ReturnedLike | None = None
    _called_with: CalledWith | None = None

    def __init__(self, owner: nn.Module, graph: fx.Graph, passed: list[PassedTensor] = (),
                 returned: ReturnedLike | None = None, called_with: CalledWith | None = None):
        super().__init__()
        for table in ("_modules", "_parameters", "_buffers"):  # the originals, in their order, containers kept
            getattr(self, table).update(getattr(owner, table))
        for table in _HOOKS:  # the user's hooks on the module it stands in for (features, logging) still run
            getattr(self, table).update(getattr(owner, table))
        for name, value in vars(owner).items():
            if not name.startswith("_") and name not in vars(self):
                setattr(self, name, value)
        self.train(owner.training)
        self.source_module = f"{type(owner).__module__}.{type(owner).__qualname__}"
        self._passed = list(passed)  # the tensors it reads from its call besides the input, in order
        self._input_name = input_name(owner)  # a caller may name the input (PVT's encoder: `pixel_values=`)
        self._returned = returned  # the structure the original returned its tensor in (subgraph_call.py)
        self._called_with = called_with  # the plain arguments of the call it was made from
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


def _form(graph: fx.Graph) -> list[tuple]:
    """A graph's operators and arguments, values by their place: equal for two calls that compute alike."""
    place = {node: index for index, node in enumerate(graph.nodes)}
    return [(node.op, str(node.target), repr(fx.node.map_arg((node.args, node.kwargs), lambda value: place[value])))
            for node in graph.nodes]


def _no_values(names: list[str]) -> dict[str, torch.Tensor]:
    return {}


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
    not yet put in its place; `windows` and `watch`: see `_graph`."""
    owner = model.get_submodule(path)
    graph, reads = _graph(program, path, owner, windows, watch)
    aliases = [name for name, each in model.named_modules(remove_duplicate=False) if each is owner and name != path]
    for alias in [alias for alias in aliases if any(_position(node, alias) for node in program.graph.nodes)]:
        # one graph stands in for every call: each must be that graph (a literal the proof's inputs miss)
        if _form(_graph(program, alias, owner, windows, watch)[0]) != _form(graph):
            raise SubgraphError(f"the model calls it as '{alias}' too, with other sizes or arguments")
    dense_call = watch.call(path) if watch else None
    replacement = SubgraphModule(owner, graph, reads, *(besides_input(dense_call, owner) if dense_call else ()))
    try:
        parts = unfolded_queries(owner, lambda target: get_tensor(program.module, prefix_of(path) + target))
    except AttributeError as missing:
        raise SubgraphError(f"the program holds none of its query tensors ({missing})") from None
    for name, part in parts.items():
        setattr(replacement, name, part)  # its graph keeps the dense attention scale: queries as the Program's
    _lend_constants(replacement, graph, program, prefix_of(path))
    return replacement


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

