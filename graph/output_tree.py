"""A captured model's outputs kept in builtin containers (tuple, list, dict).

torch.export records the structure of a model's outputs, classes included: a Hugging Face model returns
an `ImageClassifierOutput`, and a `.pt2` saved with that structure can only be read back by a process that
has imported the library that registered the class. prunefx never imports a module because a file names
it, so a Program keeps its outputs in builtin containers: a keyed container becomes a dict with the same
keys, anything else a tuple, with the same leaves in the same order. The user's own classes come back
only in the write-back (prunefx/interop/write_back.py), where their module builds them itself.
"""

from __future__ import annotations

import json

import torch
import torch.utils._pytree as pytree

_BUILTIN = (tuple, list, dict)


def builtin_spec(spec: pytree.TreeSpec) -> pytree.TreeSpec:
    """`spec` with every container that is not a tuple, list or dict replaced by a dict (when its context
    is its keys, one per child) or a tuple."""
    if spec.is_leaf():
        return spec
    children = [builtin_spec(child) for child in spec.children()]
    if spec.type in _BUILTIN:
        return pytree.TreeSpec(spec.type, spec.context, children)
    keys = spec.context
    if isinstance(keys, (list, tuple)) and len(keys) == len(children) and all(isinstance(k, str) for k in keys):
        return pytree.TreeSpec(dict, list(keys), children)
    return pytree.TreeSpec(tuple, None, children)


def use_builtin_outputs(module: torch.fx.GraphModule) -> bool:
    """Make `module` (from ExportedProgram.module()) return builtin containers; True when it changed."""
    codegen = module.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None or info.out_spec is None:
        return False
    spec = builtin_spec(info.out_spec)
    if spec == info.out_spec:
        return False
    codegen.pytree_info = info._replace(out_spec=spec)
    module._out_spec = spec
    module.recompile()
    return True


# How torch.export's JSON names the containers that a Program's inputs and outputs may use: builtins
# only (torch writes None for a leaf).
_BUILTIN_NAMES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}


def foreign_container(serialized_spec) -> str | None:
    """The first container type named in a serialized input/output tree (torch.export's JSON) that is not
    a builtin, or None. Such a file can be read only where that type is registered, which would mean
    importing the module the file names."""
    try:
        document = json.loads(serialized_spec) if isinstance(serialized_spec, str) else serialized_spec
    except ValueError:
        return "(an unreadable tree description)"
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            if kind not in _BUILTIN_NAMES:
                return str(kind)
            stack.extend(item.get("children_spec") or [])
    return None
