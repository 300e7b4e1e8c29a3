"""Packages whose public names are imported on first use (PEP 562), so that importing one of their light modules
(errors, a pass's configuration, the command line's flags) does not import torch through the package first.
prunefx.graph, prunefx.passes and prunefx.runtime are such packages."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping


def lazy_names(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, whose name N is imported from the module `table[N]` when
    first read, then kept in the package (later reads skip __getattr__)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__


def functions_over_modules(package: str, table: Mapping[str, str]) -> None:
    """Make the names of `table` that are functions named as the modules that define them (a pass, `capture`)
    stay the functions: the import system binds a submodule on its package once it is first imported, which
    would put the module where the function is looked up."""

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value) -> None:
            if isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}" and name in table:
                value = getattr(value, name)
            super().__setattr__(name, value)

    sys.modules[package].__class__ = _Package
