"""Where a Program computes: naming a device, and moving a Program (or a captured GraphModule) to one.

- `device_named(name)`: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N" as a
  torch.device; a CUDA device torch cannot see is one PrunefxError line, before anything runs.
- `move_module(module, device)`: every tensor a captured graph reads (parameters, buffers and the constants
  torch.export lifted as plain attributes, which `Module.to` leaves behind) moved, and every device the graph
  names as an argument (`aten.arange/zeros/full(..., device=cpu)`, `_to_copy(device=...)`, `aten.to.device`)
  renamed along, where it named the device the tensors came from; with a `dtype`, every float32 the graph
  names (the `.float()`/`.to()` casts, their `_assert_tensor_metadata` checks, factory and softmax dtypes)
  becomes that dtype, and so do the floats it makes without naming a dtype (a factory's default, integers
  divided), as a half-precision deployment runs the model end to end; a fill value beyond the half type's range
  (an attention mask's -1e9) becomes its largest finite value. This is torch.export's
  `move_to_device_pass` for the unlifted GraphModule a Program holds (that pass takes an ExportedProgram:
  re-exporting twice per move would cost more than the work it moves and would rename the nodes).
- `move_program(program, device)`: the module and the example inputs.
Node shape metadata is not rewritten: the devices of the graph's tensors are part of what
Program.refresh_meta compares, so the next shape propagation runs again on the moved tensors.
"""

from __future__ import annotations

import itertools
import math
import operator

import torch

from prunefx.graph.errors import PrunefxError
from prunefx.graph.launch import torchrun_launch
from prunefx.graph.program import Program

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def device_named(name: str | torch.device | None) -> torch.device:
    """The device `name` says (None or "auto": CUDA when available, else the CPU), with a CUDA index."""
    if name is None or name == "auto":
        return _cuda(_current_index()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise PrunefxError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise PrunefxError(f"device {name!r} is not supported: use one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise PrunefxError(f"device {name!r} asked, but torch sees no CUDA GPU (torch {torch.__version__}, CUDA "
                           f"build {torch.version.cuda}): use --device cpu (or auto)")
    return _cuda(_current_index() if device.index is None else device.index)


def _current_index() -> int:
    """The GPU a name without an index means: torch's current one, or under torchrun the process's own,
    LOCAL_RANK's, as the trainer and NCCL take it (every process's current device is 0 until it is set)."""
    launch = torchrun_launch()
    return launch.local_rank if launch.distributed else torch.cuda.current_device()


def _cuda(index: int) -> torch.device:
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise PrunefxError(f"device cuda:{index} asked, but torch sees {count} CUDA GPU(s) (cuda:0 to "
                           f"cuda:{count - 1})")
    return torch.device("cuda", index)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module without tensors)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _same(named, device: torch.device) -> bool:
    """Whether a device argument of a node (a torch.device or its text) names `device` ("cuda" is cuda:0's
    twin only where torch's current device is 0)."""
    try:
        named = torch.device(named)
    except (RuntimeError, TypeError, ValueError):
        return False
    if named.type != device.type:
        return False
    if named.type == "cuda" and (named.index is None) != (device.index is None):
        current = torch.cuda.current_device()
        return (named.index if named.index is not None else current) == (
            device.index if device.index is not None else current)
    return named.index == device.index


def _rename_devices(graph: torch.fx.Graph, source: torch.device, target: torch.device) -> bool:
    changed = False
    for node in graph.nodes:
        if "device" in node.kwargs and node.kwargs["device"] is not None and _same(node.kwargs["device"], source):
            node.kwargs = {**node.kwargs, "device": target}
            changed = True
        if (node.op == "call_function" and node.target is torch.ops.aten.to.device and len(node.args) > 1
                and _same(node.args[1], source)):
            node.args = (node.args[0], target, *node.args[2:])
            changed = True
    return changed


def _move_plain_attributes(graph_module: torch.fx.GraphModule, device: torch.device,
                           dtype: torch.dtype | None) -> None:
    """Tensors reached by get_attr that are neither parameters nor buffers: `Module.to` does not move them."""
    for node in graph_module.graph.find_nodes(op="get_attr"):
        owner_name, _, leaf = node.target.rpartition(".")
        owner = operator.attrgetter(owner_name)(graph_module) if owner_name else graph_module
        value = getattr(owner, leaf, None)
        if (isinstance(value, torch.Tensor) and leaf not in owner._parameters and leaf not in owner._buffers):
            cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
            if value.device != device or value.dtype != cast:
                setattr(owner, leaf, value.to(device=device, dtype=cast))


def _index_arithmetic(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The floating nodes whose every use ends, through floating arithmetic alone, in a value that is not
    floating (an index from `arange(w, dtype=float32)` cast to int64, a comparison's mask), with the dtype
    assertions on them: left float32, which holds such integers exactly, where bf16 holds them only up to 256
    and fp16 up to 2048 (a rounded index reads another element, or past the end)."""
    ending: set[torch.fx.Node] = set()
    for node in reversed(graph.nodes):  # a node's users come after it: decided first
        if not _floating(node):
            continue
        uses = [user for user in node.users if not _checks_only(user)]
        if uses and all(user in ending or _not_floating(user) for user in uses):
            ending.add(node)
    return ending | {user for node in ending for user in node.users if _checks_only(user)}


def _floating(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _not_floating(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return (node.op == "call_function" and isinstance(value, (torch.Tensor, int, bool, torch.SymInt, torch.SymBool))
            and not (isinstance(value, torch.Tensor) and value.is_floating_point()))


def _checks_only(node: torch.fx.Node) -> bool:
    """A call that makes no value (the exporter's dtype and shape assertions)."""
    return node.op == "call_function" and "val" in node.meta and node.meta["val"] is None


def _rename_float32(graph: torch.fx.Graph, dtype: torch.dtype, kept: set[torch.fx.Node]) -> bool:
    """Every float32 a node names as an argument (a cast's target, an assertion's expected dtype, a factory's
    or softmax's dtype) renamed to `dtype`: left as float32, a cast would mix precisions and the assertions
    the exporter writes for `.float()`/`.to()` would refuse the half-precision tensors. The `kept` nodes, index
    arithmetic, stay float32 (_index_arithmetic)."""
    changed = False
    for node in graph.nodes:
        if node in kept:
            continue
        if node.op == "call_function" and any(value is torch.float32 for value in (*node.args, *node.kwargs.values())):
            node.args = tuple(dtype if value is torch.float32 else value for value in node.args)
            node.kwargs = {key: dtype if value is torch.float32 else value for key, value in node.kwargs.items()}
            changed = True
    return changed


def _cast_unnamed_float32(graph: torch.fx.Graph, dtype: torch.dtype, kept: set[torch.fx.Node]) -> bool:
    """Every float32 tensor the graph makes from no floating input without naming float32 (`torch.zeros(4)`,
    `torch.linspace`, `arange(n) / n`: the default dtype, which the exporter does not write down) made in
    `dtype` too: left as float32, it promotes the half-precision tensors it meets back to float32, and the
    next layer refuses them. A factory takes `dtype` as its argument; any other op gets a cast after it."""
    changed = False
    for node in list(graph.nodes):
        if node in kept or not _makes_float32_from_nothing(node) or _cast_already(node):
            continue
        if _takes_dtype(node):
            if node.kwargs.get("dtype") is not None:
                continue  # named: _rename_float32's (or an earlier move's)
            node.kwargs = {**node.kwargs, "dtype": dtype}
        else:
            with graph.inserting_after(node):
                cast = graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": dtype})
            node.replace_all_uses_with(cast, delete_user_cb=lambda user, cast=cast: user is not cast)
        changed = True
    return changed


# Operators that store a number they are given in the tensor they make (a fill value, a clamp's bound): in half
# precision a float32-sized one (-1e9, finfo(float32).min: the usual attention-mask fill, baked in at capture)
# cannot be stored and the call raises. Arithmetic with a number (x / 1e5) computes in float and is left alone.
_FILLS = {"masked_fill", "full", "full_like", "new_full", "fill", "scalar_tensor", "where", "clamp", "clamp_min",
          "clamp_max", "constant_pad_nd", "pad", "hardtanh"}


def _fit_fill_values(graph: torch.fx.Graph, dtype: torch.dtype) -> bool:
    """Every finite fill value beyond `dtype`'s range made its largest finite value of the same sign: what the
    model meant by it (a mask's "minus infinity"), and what a model written for half precision fills with."""
    largest = torch.finfo(dtype).max
    changed = False
    for node in graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        if node.op != "call_function" or packet is None or packet.__name__.rstrip("_") not in _FILLS:
            continue
        args = tuple(_within(value, largest) for value in node.args)
        kwargs = {key: _within(value, largest) for key, value in node.kwargs.items()}
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed = True
    return changed


def _within(value, largest: float):
    """A finite float beyond ±`largest` made ±`largest`; any other argument as it is."""
    if isinstance(value, float) and largest < abs(value) < math.inf:
        return math.copysign(largest, value)
    return value


def _makes_float32_from_nothing(node: torch.fx.Node) -> bool:
    """A call whose recorded value is float32 while every node it reads is known to hold no floating tensor."""
    value = node.meta.get("val")
    if node.op != "call_function" or not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return False
    for read in node.all_input_nodes:
        known = read.meta.get("val")
        if not isinstance(known, (torch.Tensor, int, bool, torch.SymInt, torch.SymBool)) or (
                isinstance(known, torch.Tensor) and known.is_floating_point()):
            return False  # a floating input (cast with the module) or one whose value was not recorded
    return True


def _takes_dtype(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(argument.name == "dtype" and argument.kwarg_only for argument in schema.arguments)


def _cast_already(node: torch.fx.Node) -> bool:
    """Whether an earlier move already cast this node's value (its only user is a cast naming a dtype)."""
    users = list(node.users)
    return (len(users) == 1 and users[0].target is torch.ops.aten._to_copy.default
            and users[0].kwargs.get("dtype") is not None)


def move_module(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype | None = None, *,
                source: torch.device | None = None) -> torch.nn.Module:
    """`module` (in place, returned) with its tensors on `device` and the devices its graphs name renamed;
    with a floating `dtype`, its floating-point tensors and the float32 its graphs name cast to it as well (the
    cuda backend times fp16/bf16 copies). `source`: the device its graphs name, where that is not the one its
    tensors are on (a caller moved the module with `Module.to`, which renames nothing)."""
    target = _indexed(torch.device(device))
    source = module_device(module) if source is None else _indexed(torch.device(source))
    module.to(device=target, dtype=dtype) if dtype is not None else module.to(target)
    for graph_module in module.modules():
        if isinstance(graph_module, torch.fx.GraphModule):
            _move_plain_attributes(graph_module, target, dtype)
            moved = source != target and _rename_devices(graph_module.graph, source, target)
            cast = dtype is not None and dtype != torch.float32 and _cast_graph(graph_module.graph, dtype)
            if moved or cast:
                graph_module.recompile()
    return module


def _cast_graph(graph: torch.fx.Graph, dtype: torch.dtype) -> bool:
    """The float32 `graph` names or makes, cast to the half-precision `dtype` but for its index arithmetic, and
    fill values beyond `dtype`'s range brought within it; whether anything changed."""
    kept = _index_arithmetic(graph)  # before the renames: read from the values recorded at capture
    return (_rename_float32(graph, dtype, kept) | _cast_unnamed_float32(graph, dtype, kept)
            | (dtype.itemsize < 4 and _fit_fill_values(graph, dtype)))


def _indexed(device: torch.device) -> torch.device:
    """A CUDA device with its index: the device checks the exporter writes for `.float()`/`.to()` compare devices
    strictly under fake tensors (torch.compile, torch.export), where `cuda` is not the tensors' `cuda:0`."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def move_program(program: Program, device: str | torch.device, *, source: torch.device | None = None) -> Program:
    """`program` (in place, returned) on `device`: its module (see move_module, and `source`) and its example
    inputs."""
    move_module(program.module, device, source=source)
    program.example_inputs = tuple(x.to(device) for x in program.example_inputs)
    return program
