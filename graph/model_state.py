"""Leave the user's module as prunefx found it, whatever running it on our behalf did.

torch.export runs the module's forward on fake tensors. Attributes the forward assigns stay behind
(Ultralytics' Detect head sets `anchors`, `strides` and `shape`: FakeTensors the model can no longer run
with), and forward hooks hand fake tensors to whatever the user's hooks keep. `left_as_found(model)`
records every submodule's attributes, the contents of its containers and the values of its buffers and
tensor attributes, suspends the forward hooks that are not torch's own, and puts all of it back on the
way out, on success and on error alike. Parameters are kept by identity only (no copy: a ViT-L's weights
would double the memory); nothing prunefx runs writes into them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.modules import module as torch_module

_CONTAINERS = (list, dict, set)
# Hooks suspended: a capture records the model's computation, not what observers do with it.
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks")
_GLOBAL_HOOK_TABLES = ("_global_forward_hooks", "_global_forward_pre_hooks")


def _part_of_model(hook) -> bool:
    """torch's weight_norm, spectral_norm and pruning masks compute weights in pre-hooks, and prunefx's own
    hooks put models in the form it captures (an RT-DETR decoder's fresh anchors): part of the model."""
    owner = getattr(hook, "__module__", None) or type(hook).__module__ or ""
    return owner.split(".")[0] in ("torch", "prunefx")


class _ModuleRecord:
    """One module's attributes as found: references, container contents and tensor values."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.attributes = dict(module.__dict__)
        self.contents = {key: _shallow_copy(value) for key, value in self.attributes.items()
                         if isinstance(value, _CONTAINERS)}
        self.tensors = {}  # id -> (tensor, value): buffers and plain tensor attributes, not parameters
        for tensor in _own_tensors(module):
            if id(tensor) not in self.tensors and not tensor.is_meta and _version(tensor) is not None:
                self.tensors[id(tensor)] = (tensor, tensor.detach().clone())

    def restore(self) -> None:
        state = self.module.__dict__
        for key in [key for key in state if key not in self.attributes]:
            del state[key]
        for key, value in self.attributes.items():
            if state.get(key, _MISSING) is not value:
                state[key] = value
        for key, saved in self.contents.items():
            _refill(self.attributes[key], saved)
        with torch.no_grad():
            for tensor, value in self.tensors.values():
                # by value: batch norm's kernel updates its running statistics without a version bump
                if not torch.equal(tensor, value):
                    tensor.copy_(value)


_MISSING = object()


def _shallow_copy(container):
    return list(container.items()) if isinstance(container, dict) else list(container)


def _refill(container, saved: list) -> None:
    """Put `saved` back into `container` in place (its identity is what other objects hold), keeping order."""
    container.clear()
    if isinstance(container, list):
        container.extend(saved)
    else:
        container.update(saved)


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor keeps no version counter; nothing can write into it either
        return None


def _own_tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from (buffer for buffer in module._buffers.values() if buffer is not None)
    yield from (value for value in module.__dict__.values()
                if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter))


def _hook_tables(model: torch.nn.Module) -> list[dict]:
    tables = [getattr(module, name) for module in model.modules() for name in _HOOK_TABLES]
    return tables + [getattr(torch_module, name) for name in _GLOBAL_HOOK_TABLES]


@contextlib.contextmanager
def hooks_suspended(model: torch.nn.Module) -> Iterator[None]:
    """Run the block without the forward hooks and pre-hooks (the modules' and the global ones) of the
    user's code; they are back, in their order, when it ends."""
    tables = _hook_tables(model)
    saved = [_shallow_copy(table) for table in tables]
    try:
        for table in tables:
            for key in [key for key, hook in table.items() if not _part_of_model(hook)]:
                del table[key]
        yield
    finally:
        for table, items in zip(tables, saved):
            _refill(table, items)


@contextlib.contextmanager
def left_as_found(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with `model`'s forward hooks suspended; restore every submodule's attributes,
    containers, buffers and tensor attributes when it ends, however it ends."""
    records = [_ModuleRecord(module) for module in model.modules()]
    try:
        with hooks_suspended(model):
            yield
    finally:
        for record in records:
            record.restore()
