"""Leave the user's module as prunefx found it, whatever running it on our behalf did.

torch.export runs the module's forward on fake tensors. Attributes the forward assigns stay behind
(Ultralytics' Detect head sets `anchors`, `strides` and `shape`: FakeTensors the model can no longer run
with), and forward hooks hand fake tensors to whatever the user's hooks keep. `left_as_found(model)`
records every submodule's attributes, the contents of its containers and the values of its buffers and
tensor attributes, and what the forward hooks keep (their containers, those nested in them, and the names they
rebind: a counter in a closure; hooks stay in place: libraries compute with them), and
puts all of it back on the way out, on success and on error alike. Parameters are kept by identity only (no
copy: a ViT-L's weights would double the memory); nothing prunefx runs writes into them.
"""

from __future__ import annotations

import array
import collections
import contextlib
import copy
import functools
import random
import types
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.nn.modules import module as torch_module

_CONTAINERS = (list, dict, set, collections.deque)
_NESTED_DEPTH = 3  # containers inside containers a hook keeps (activations[name].append(output)), this deep
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks")
_GLOBAL_HOOK_TABLES = ("_global_forward_hooks", "_global_forward_pre_hooks")


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
        _put_back(self.tensors.values())


_MISSING = object()


def _put_back(saved: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Each (tensor, value) pair's value copied back where it changed: by value, since batch norm's kernel updates
    its running statistics without a version bump."""
    with torch.no_grad():
        for tensor, value in saved:
            if not torch.equal(tensor, value):
                tensor.copy_(value)


@contextlib.contextmanager
def values_kept(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Each tensor's value as it was, put back when the block ends, however it ends."""
    saved = [(tensor, tensor.detach().clone()) for tensor in tensors]
    try:
        yield
    finally:
        _put_back(saved)


@contextlib.contextmanager
def random_state_kept(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """torch's random state on the CPU and on each GPU `tensors` are on, and Python's and numpy's, put back when
    the block ends: dropout in a training-mode model draws from torch's, and a model's own code (a layer drop
    written with `random.random()`) from the others, also while torch.export traces it."""
    python, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=sorted({t.device.index for t in tensors if t.device.type == "cuda"})):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)


def _shallow_copy(container):
    return list(container.items()) if isinstance(container, dict) else list(container)


def _refill(container, saved: list) -> None:
    """Put `saved` back into `container` in place (its identity is what other objects hold), keeping order."""
    container.clear()
    if isinstance(container, (list, collections.deque)):
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


def _hook_targets(hook) -> list:
    """What a hook can write into: its closure's objects, the object it is bound to or is, a partial's arguments,
    its default arguments, the module-level names its code reads (`activations.append(output)` in a script)."""
    found, function = [], hook
    while isinstance(function, functools.partial):
        found += [*function.args, *function.keywords.values()]
        function = function.func
    if not isinstance(function, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        found.append(function)  # an object with __call__ (a counter of calls): itself, then its method's code
        function = type(function).__call__  # noqa: B004 (the method, not a test of callability)
    found.append(getattr(function, "__self__", None))
    for cell in getattr(function, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            found.append(cell.cell_contents)
    found += list(getattr(function, "__defaults__", None) or ())
    names, namespace = getattr(getattr(function, "__code__", None), "co_names", ()), getattr(function, "__globals__", {})
    found += [namespace[name] for name in names if name in namespace]
    # an object's lists and dicts are appended to in place (self.outputs.append(output)): kept as well
    found += [value for target in found if _plain_object(target) for value in vars(target).values()
              if isinstance(value, _CONTAINERS)]
    found += _nested_containers([target for target in found if isinstance(target, _CONTAINERS)])
    return [target for target in found if isinstance(target, _CONTAINERS) or _plain_object(target)
            or _own_tensor(target) or _own_buffer(target)]


def _nested_containers(containers: list) -> list:
    """The containers inside `containers`, _NESTED_DEPTH levels down (a dict of lists of outputs per layer)."""
    found: list = []
    for _ in range(_NESTED_DEPTH):
        containers = [value for container in containers if not isinstance(container, set)
                      for value in (container.values() if isinstance(container, dict) else container)
                      if isinstance(value, _CONTAINERS)]
        found += containers
    return found


def _hook_bindings(hook) -> list[tuple[object, str]]:
    """The names a hook can rebind (a call counter: `nonlocal calls; calls += 1`, or `global calls`): its closure's
    cells and the module-level names its code reads, as (cell or namespace, name)."""
    function = hook
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)  # a bound method's function
    if not isinstance(function, types.FunctionType):
        return []
    cells = [(cell, "cell_contents") for cell in function.__closure__ or ()]
    namespace = function.__globals__
    return cells + [(namespace, name) for name in function.__code__.co_names if name in namespace]


class _Binding:
    """A closure cell's or a module-level name's value as found (by identity): put back where it was rebound."""

    def __init__(self, holder, name: str):
        self.holder, self.name = holder, name
        self.value = self._read()

    def _read(self):
        if isinstance(self.holder, dict):
            return self.holder.get(self.name, _MISSING)
        try:
            return self.holder.cell_contents
        except ValueError:  # an empty cell
            return _MISSING

    def restore(self) -> None:
        if self._read() is self.value or self.value is _MISSING:
            return
        if isinstance(self.holder, dict):
            self.holder[self.name] = self.value
        else:
            self.holder.cell_contents = self.value


def _own_tensor(value) -> bool:
    """A tensor a hook may update in place (a call counter, a running sum); not a model's weight, which nothing
    prunefx runs writes into."""
    return isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) and not value.is_meta


def _own_buffer(value) -> bool:
    """A numpy array, array.array or bytearray a hook may update in place (`counts[0] += 1`): put back by value."""
    return isinstance(value, (np.ndarray, array.array, bytearray))


def _buffers_kept(values) -> list[tuple[object, object]]:
    """(buffer, its copy) for each of `values` that is a buffer (_own_buffer)."""
    return [(value, copy.copy(value)) for value in values if _own_buffer(value)]


def _put_back_buffers(saved: list[tuple[object, object]]) -> None:
    for buffer, value in saved:
        if isinstance(buffer, np.ndarray):
            if buffer.shape == value.shape and buffer.flags.writeable:
                np.copyto(buffer, value)
        else:
            buffer[:] = value


def _plain_object(value) -> bool:
    return hasattr(value, "__dict__") and not isinstance(value, (type, torch.Tensor, types.FunctionType,
                                                                  types.ModuleType, types.MethodType))


class _KeptRecord:
    """A container or an object a hook keeps things in, as found: its contents, or its attributes."""

    def __init__(self, target):
        self.target = target
        if isinstance(target, torch.Tensor) or _own_buffer(target):
            self.saved = None
            held = [target]
        else:
            self.saved = _shallow_copy(target) if isinstance(target, _CONTAINERS) else dict(vars(target))
            held = [value for value in (target.values() if isinstance(target, dict) else
                                        target if isinstance(target, _CONTAINERS) else self.saved.values())]
        # tensors and buffers changed in place are put back by value
        self.values = [(tensor, tensor.detach().clone()) for tensor in held if _own_tensor(tensor)]
        self.buffers = _buffers_kept(held)

    def restore(self) -> None:
        if isinstance(self.target, _CONTAINERS):
            _refill(self.target, self.saved)
        elif self.saved is not None:
            state = vars(self.target)
            state.clear()
            state.update(self.saved)
        _put_back(self.values)
        _put_back_buffers(self.buffers)


@contextlib.contextmanager
def hook_state_kept(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with every forward hook and pre-hook in place (libraries compute with them: Hugging Face
    collects hidden states in hooks), and put back what the hooks keep, in their closures or the objects they
    are bound to, when it ends: a user's list of activations gets none of the export's fake tensors."""
    seen: set[int] = set()
    records: list = []
    for table in _hook_tables(model):
        for hook in list(table.values()):
            for target in _hook_targets(hook):
                if id(target) not in seen:
                    seen.add(id(target))
                    records.append(_KeptRecord(target))
            records += [_Binding(holder, name) for holder, name in _hook_bindings(hook)]
    try:
        yield
    finally:
        for record in records:
            record.restore()


@contextlib.contextmanager
def left_as_found(model: torch.nn.Module) -> Iterator[None]:
    """Run the block; restore every submodule's attributes, containers, buffers and tensor attributes, and
    what its hooks keep, when it ends, however it ends."""
    records = [_ModuleRecord(module) for module in model.modules()]
    try:
        with hook_state_kept(model):
            yield
    finally:
        for record in records:
            record.restore()
