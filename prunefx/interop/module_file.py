"""module.pt: the pruned model written back into the user's own module class (`prunefx prune --module`).

The file is `torch.save` of the module, a pickle: loading it runs code named in the file, so it is for
files from a trusted source only (`torch.load(path, weights_only=False)`, with the model's code importable).
model.pt2 stays the deliverable that anyone can read safely (plain tensor data and JSON, audited on load).
module.pt is written only when the write-back is proven (prunefx/interop/write_back.py); otherwise one warning line
says why, and report.json records it. Where the model's own forward spells a pruned width, module.pt holds a
stand-in made from the pruned graph: a note says so, and the report names the class (`stands_in_for`).
"""

from __future__ import annotations

import importlib
import operator
import pickle
import sys
import types
import warnings
from pathlib import Path

import torch

from prunefx.graph import Program
from prunefx.interop.unread_tensors import WriteBackWarning
from prunefx.interop.write_back import WriteBackError, to_module
from prunefx.models.user_files import USER_NAMES

FILE_NAME = "module.pt"


def write_module(staging: Path, program: Program, model: torch.nn.Module) -> dict:
    """module.pt in `staging` when `to_module` proves the write-back; the report's `module` entry."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WriteBackWarning)
            module = to_module(program, model)
    except WriteBackError as error:
        print(f"warning: {FILE_NAME} not written: {error}", file=sys.stderr, flush=True)
        return {"written": False, "reason": str(error)}
    torch.save(module, staging / FILE_NAME, pickle_module=_ByUserNames)
    written = {"written": True, "file": FILE_NAME, "class": f"{_user_name(type(module))}.{type(module).__qualname__}"}
    notes = [str(warning.message) for warning in caught if issubclass(warning.category, WriteBackWarning)]
    for note in notes:
        print(f"note: {FILE_NAME}: {note}", file=sys.stderr, flush=True)
    if notes:
        written["notes"] = notes
    if type(module) is not type(model):  # the model's own forward spells a width: made from its subgraph
        written["stands_in_for"] = f"{_user_name(type(model))}.{type(model).__qualname__}"
        print(f"note: {FILE_NAME} holds a stand-in for {type(model).__qualname__} made from the pruned graph "
              "(its own forward cannot compute the pruned widths): same submodules and tensors, not its "
              "class's other methods", file=sys.stderr, flush=True)
    return written


def _user_name(thing) -> str:
    """The module name the user imports `thing`'s file by (a model file's), else its own."""
    return USER_NAMES.get(thing.__module__, thing.__module__)


class _ModuleByName:
    """Pickled as `importlib.import_module(name)`: the module found by name where the file is loaded."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return importlib.import_module, (self.name,)


class _Pickler(pickle.Pickler):
    """A pickler that names the classes and functions of a model file (`prunefx prune model.py:build`) by the
    module the user imports it by, not by the name prunefx imported the file under, which no other process has."""

    def reducer_override(self, obj):
        name = getattr(obj, "__module__", None)
        if isinstance(obj, (type, types.FunctionType)) and name in USER_NAMES:
            return operator.attrgetter(obj.__qualname__), (_ModuleByName(USER_NAMES[name]),)
        return NotImplemented


_ByUserNames = types.ModuleType("prunefx_module_pickle")  # torch.save's pickle_module: a module with a Pickler
_ByUserNames.Pickler = _Pickler
