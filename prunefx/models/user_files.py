"""Models built by a factory function in the user's own Python file (`path/to/file.py:FACTORY`)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import torch

from prunefx.models.spec import DEFAULT_IMAGE_SIZE, ModelReferenceError, ModelSpec, require_file

# the name each imported file's module has here -> the one the user imports it by (`import model` for model.py):
# what a pickle of its classes must name, to load where the user's code is importable (interop/module_file.py)
USER_NAMES: dict[str, str] = {}


def _import_file(path: Path):
    # One module name per file (two model.py files in different folders must not collide),
    # registered in sys.modules before running it, as dataclasses and pickling look modules up there.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"prunefx_user_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    if path.stem.isidentifier():
        USER_NAMES[module_name] = path.stem
    try:
        with _run_as_script(path):
            spec.loader.exec_module(module)
    except SystemExit as exc:
        del sys.modules[module_name]
        raise ModelReferenceError(f"importing model file {path} called sys.exit({exc.code!r})") from exc
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelReferenceError(f"importing model file {path} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException:  # a Ctrl-C half-way: no half-run module left for the next import to find
        sys.modules.pop(module_name, None)
        raise
    return module


@contextlib.contextmanager
def _run_as_script(path: Path):
    """While the user's code runs (its import, its factory): its folder first on sys.path, as `python FILE` has
    it, so that it imports the modules beside it; and no bytecode written, so no __pycache__ beside the user's
    files. The folder and sys.dont_write_bytecode are taken back after; entries the user's code added itself (a
    vendored library it imports later, in its factory) stay."""
    folder, writes_bytecode = str(path.resolve().parent), sys.dont_write_bytecode
    sys.path.insert(0, folder)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)  # the first: the one put in above, before whatever the user's code put in
        sys.dont_write_bytecode = writes_bytecode


def file_model(path: Path, factory: str, image_size: int | None) -> ModelSpec:
    if not factory.isidentifier():
        raise ModelReferenceError(f"{factory!r} after {path}: is not a Python function name")
    if not path.exists():
        raise ModelReferenceError(f"model file {path} not found")
    require_file(path, "model file", ModelReferenceError)
    source = _import_file(path)
    build = getattr(source, factory, None)
    if not callable(build):
        names = [n for n in vars(source) if callable(getattr(source, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(factory, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelReferenceError(f"model file {path} has no function {factory!r}{hint}")
    try:
        with _run_as_script(path):  # a factory may import its siblings only when called
            module = build()
    except SystemExit as exc:  # user code asking to end the process is a failed build, not prunefx's exit
        raise ModelReferenceError(f"{path}:{factory}() called sys.exit({exc.code!r}) instead of returning "
                                  "a model") from exc
    except Exception as exc:
        raise ModelReferenceError(f"{path}:{factory}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelReferenceError(
            f"{path}:{factory}() returned {type(module).__name__}; it must return a torch.nn.Module")
    size = image_size or DEFAULT_IMAGE_SIZE  # the factory takes no arguments: image_size only sets the shape
    return ModelSpec(module.eval(), None, f"{path.stem}:{factory}", (1, 3, size, size))
