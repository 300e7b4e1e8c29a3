"""Which graph-node targets a `.pt2` read by prunefx may call: functional ATen operators, judged by what
they are (their registered schema and tags), never by a list of bad names.

A node of a saved graph runs whenever the model runs, so an op that writes files, prints, seeds, talks to
other processes or writes into its arguments would run code the file chose; torch's own verifier does not
check that ops are functional. Admitted: registered `aten` overloads that mutate nothing, are not `out=`,
return something, are not side-effectful and name no file, and the checks torch.export inserts (`_is_check`); outside torch.ops only the pure `_operator`
shape arithmetic (no `pow`: `9 ** 9 ** 9` is a hang, not a shape). The rules: docs/file-safety.md.
"""

from __future__ import annotations

import functools
import operator
import re

import torch
from torch.fx.node import _side_effectful_functions

_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.(?P<op>[A-Za-z_][A-Za-z0-9_]*)\.(?P<overload>[A-Za-z_][A-Za-z0-9_]*)")
_PURE_OPERATOR_FUNCTIONS = frozenset({"getitem", "add", "sub", "mul", "floordiv", "mod", "neg", "pos", "abs",
                                      "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_"})
_FILE_ARGUMENT = re.compile(r"(file|path)(name)?")


def refusal(target: str) -> str | None:
    """None if a graph node may call `target` (its serialized name, e.g. 'torch.ops.aten.conv2d.default'),
    else why not, in a few words."""
    module, _, function = target.partition(".")
    if module == "_operator":
        return None if function in _PURE_OPERATOR_FUNCTIONS else "is not a pure shape-arithmetic function"
    match = _ATEN_TARGET.fullmatch(target)
    if match is None:
        return "is not a functional ATen operator"
    return _overload_refusal(match["op"], match["overload"])


@functools.lru_cache(maxsize=4096)
def _overload_refusal(name: str, overload: str) -> str | None:
    try:
        op = getattr(getattr(torch.ops.aten, name), overload)
    except (AttributeError, RuntimeError):
        return "is not a registered ATen operator"
    if not isinstance(op, torch._ops.OpOverload):
        return "is not a registered ATen operator"
    return overload_refusal(op)


def overload_refusal(op: torch._ops.OpOverload) -> str | None:
    """None if `op` is functional (module docstring), else why not."""
    schema = op._schema
    if _is_out_overload(op) or schema.overload_name == "out" or schema.overload_name.endswith("_out"):
        return "writes into an out= tensor"
    written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if written and not is_in_place(op):
        return "writes into its arguments"
    if _is_check(op):
        return None
    if not schema.returns:
        return "returns nothing: it runs only for its side effects"
    if op in _side_effectful_functions or op.overloadpacket in _side_effectful_functions:
        return "has side effects"
    if any(_FILE_ARGUMENT.fullmatch(a.name) and "str" in str(a.type) for a in schema.arguments):
        return "opens a file"
    return None


def _is_check(op: torch._ops.OpOverload) -> bool:
    """An assertion torch.export inserts (`_assert_tensor_metadata` after every `.float()` or `.to(dtype)`): named
    as one, it returns nothing, writes nothing and takes no string (no message to print, no file name), so all
    it can do is read its arguments and raise. torch lists it as side-effectful only so that it is not removed."""
    schema = op._schema
    return (schema.name.split("::")[-1].startswith("_assert") and not schema.returns
            and all(a.alias_info is None and "str" not in str(a.type) for a in schema.arguments))


def is_in_place(op) -> bool:
    """An in-place op that writes its first argument and nothing else (`relu_`, `add_`): torch.export keeps
    these from `nn.ReLU(inplace=True)`; `check_writes` decides where they may write."""
    if not isinstance(op, torch._ops.OpOverload) or not _is_in_place_kind(op):
        return False
    written = [a for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    return torch.Tag.inplace_view not in op.tags and [a.name for a in written] == ["self"]


def _is_out_overload(op: torch._ops.OpOverload) -> bool:
    """An `out=` overload: by its tag where torch has `Tag.out` (not 2.11), else by `writes_keyword_argument`."""
    return torch.Tag.out in op.tags if hasattr(torch.Tag, "out") else writes_keyword_argument(op)


def writes_keyword_argument(op: torch._ops.OpOverload) -> bool:
    """The schema's mark of an out= overload: it writes a keyword-only argument (on torch 2.14 this agrees with
    `Tag.out` on every ATen overload; tests/test_hostile_ops.py checks it)."""
    return any(a.kwarg_only and a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)


def _is_in_place_kind(op: torch._ops.OpOverload) -> bool:
    """Registered as an in-place variant: by its tag where torch has `Tag.inplace` (not 2.11), else by
    `named_in_place`."""
    return torch.Tag.inplace in op.tags if hasattr(torch.Tag, "inplace") else named_in_place(op)


def named_in_place(op: torch._ops.OpOverload) -> bool:
    """ATen's naming rule for in-place variants (`add_`, `__iadd__`), for an op whose first argument is a Tensor it
    writes. Against `Tag.inplace` on torch 2.14 it also admits a few ops that write only their first argument
    (`copy_.Tensor`, `index_put_.hacked_twin`), which `check_writes` judges like every in-place op, and it
    refuses list-argument optimizer kernels (`_fused_adam_`) the tag admits."""
    base = op._schema.name.split("::")[-1]
    named = (base.endswith("_") and not base.endswith("__")) or (base.startswith("__i") and base.endswith("__"))
    first = op._schema.arguments[0] if op._schema.arguments else None
    return (named and first is not None and first.alias_info is not None and first.alias_info.is_write
            and str(first.type) == "Tensor")


def check_writes(exported: torch.export.ExportedProgram) -> str | None:
    """None if every in-place node writes into a tensor the graph made itself or into a buffer (running
    statistics); else why not: a write into a parameter or a user input, through views too, changes
    what the file says it holds or what the caller passed."""
    signature = exported.graph_signature
    protected = set(signature.inputs_to_parameters) | set(signature.user_inputs)
    for node in exported.graph.nodes:
        if node.op == "call_function" and is_in_place(node.target):
            root = _alias_root(node.args[0])
            if root is not None and root.op == "placeholder" and root.name in protected:
                return f"node '{node.name}' ({node.target}) writes into '{root.name}'"
    return None


def clone_written_inputs(graph: torch.fx.Graph) -> list[str]:
    """Make every graph input that an in-place node writes into (a model opening with `ReLU(inplace=True)`) a
    copy first, so that running the graph leaves the caller's tensor as it was and a saved graph writes only
    into tensors it makes; the inputs copied, by name."""
    written = {root for node in graph.nodes if node.op == "call_function" and is_in_place(node.target)
               for root in [_alias_root(node.args[0] if node.args else None)]
               if root is not None and root.op == "placeholder"}
    for placeholder in [node for node in graph.nodes if node in written]:
        with graph.inserting_after(next(node for node in reversed(graph.nodes) if node.op == "placeholder")):
            copied = graph.call_function(torch.ops.aten.clone.default, (placeholder,))
        copied.meta = dict(placeholder.meta)
        placeholder.replace_all_uses_with(copied, delete_user_cb=lambda user, copied=copied: user is not copied)
    return [node.name for node in graph.nodes if node in written]


def _alias_root(value):
    """The node whose memory `value` shares: followed back through ops that return a view of an argument, and
    through the items of one that returns several (`chunk`, `split`, `unbind`)."""
    while isinstance(value, torch.fx.Node) and value.op == "call_function" and (
            _returns_view(value.target) or _item_of_views(value)):
        value = value.args[0] if value.args else None
    return value if isinstance(value, torch.fx.Node) else None


def _item_of_views(node: torch.fx.Node) -> bool:
    source = node.args[0] if node.target is operator.getitem and node.args else None
    return isinstance(source, torch.fx.Node) and source.op == "call_function" and _returns_view(source.target)


def _returns_view(op) -> bool:
    schema = getattr(op, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def serialized_name(target) -> str:
    """The name torch.export writes into a `.pt2` for a node target ('torch.ops.aten.relu.default',
    '_operator.getitem')."""
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target}"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"


def refused_nodes(graph: torch.fx.Graph) -> list[str]:
    """'<target>: <why>' for every call in `graph` that a saved file could not hold (empty: all admitted)."""
    found = []
    for node in graph.nodes:
        if node.op == "call_function":
            name = serialized_name(node.target)
            why = refusal(name)
            if why is not None:
                found.append(f"{name}: {why}")
    return found
