"""The modules that made each operator, named by their paths in the model.

torch.export names a module called through a slice of its container by the slice (`model.slice(None, -1,
None).11.ma`, as Ultralytics' RT-DETR runs `self.model[:-1]`), a path that `get_submodule` cannot follow and no
state-dict name has. The write-back, the subgraph write-back and the messages that name a module need the
module's own path (`model.11.ma`): each such path is followed through the slices on the model itself.
"""

from __future__ import annotations

import ast
import re
from collections import OrderedDict

import torch
from torch import nn

_SEGMENT = re.compile(r"slice\([^)]*\)|[^.]+")


def name_sliced_modules(graph: torch.fx.Graph, model: nn.Module) -> None:
    """Rewrite, in place, every `nn_module_stack` path of `graph` that goes through a slice of a container as the
    module's own path in `model`; a path that cannot be followed is left as it is."""
    names = {id(module): name for name, module in model.named_modules()}
    found: dict[str, str] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack or not any("slice(" in str(path) for path, _ in stack.values()):
            continue
        node.meta["nn_module_stack"] = {
            key: (_own_path(path, model, names, found) if isinstance(path, str) else path, kind)
            for key, (path, kind) in stack.items()}


def _own_path(path: str, model: nn.Module, names: dict[int, str], found: dict[str, str]) -> str:
    if path not in found:
        module = _followed(path, model)
        found[path] = names.get(id(module), path) if module is not None else path
    return found[path]


def _followed(path: str, model: nn.Module) -> nn.Module | None:
    """The module at `path`, slices taken on their containers as the model's forward took them; None when the
    path leads nowhere."""
    module = model
    for segment in _SEGMENT.findall(path):
        try:
            module = _sliced(module, segment) if segment.startswith("slice(") else module._modules[segment]
        except Exception:  # a container of the user's whose slicing fails: the path stays as torch wrote it
            return None
        if not isinstance(module, nn.Module):
            return None
    return module


def _sliced(container: nn.Module, segment: str) -> nn.Module:
    """`container[slice(...)]` as torch's own containers make it (a subclass's own constructor is not called):
    a Sequential keeps its keys, a ModuleList counts from 0 again."""
    part = slice(*ast.literal_eval(f"({segment[6:-1]},)"))
    if isinstance(container, nn.Sequential):
        return nn.Sequential(OrderedDict(list(container._modules.items())[part]))
    if isinstance(container, nn.ModuleList):
        return nn.ModuleList(list(container._modules.values())[part])
    return container[part]
