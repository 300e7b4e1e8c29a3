"""The latency backends, by name: every module of this package that defines `BACKEND` (a base.Backend) is one.

Budgets (`latency_pair`), the speed-up measure handed to passes, `prunefx bench`, `prunefx profile`, the CLI's
`--backend` choices, the budget report's runtime names and the docs table all read this registry, so a new
backend is one new file here (and its facts in facts.py). `register`/`unregister` add or remove one at run time
(a plug-in, a test). `names`, `label` and `described` list the backends by their facts alone: until the
registry is read, the shipped backends' (facts.py), so that the CLI makes its flags without importing one.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from prunefx.runtime.backends.facts import SHIPPED, Facts
from prunefx.runtime.backends.settings import Settings
from prunefx.runtime.errors import MeasurementError

if TYPE_CHECKING:
    from prunefx.runtime.backends.base import Backend, BenchModel

_REGISTRY: dict[str, Backend] = {}
_DISCOVERED = False
_NOT_BACKENDS = {"base"}
_LAZY = {"Backend", "BenchModel"}  # base.py's, imported on first use: it imports torch


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'prunefx.runtime.backends' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.base"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def _discover() -> None:
    """Import every backend module of this package once (lazily: the runtime imports the registry early)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from prunefx.runtime.backends.base import Backend

    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_BACKENDS and not module.name.startswith("_"):
            backend = getattr(importlib.import_module(f"{__name__}.{module.name}"), "BACKEND", None)
            if isinstance(backend, Backend) and backend.name not in _REGISTRY:
                _REGISTRY[backend.name] = backend


def register(backend: Backend) -> Backend:
    """Add `backend` under its name (MeasurementError if the name is taken)."""
    _discover()
    if not backend.name or backend.name in _REGISTRY:
        raise MeasurementError(f"a backend named {backend.name!r} is already registered (or the name is empty)")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _discover()
    _REGISTRY.pop(name, None)


def backends(*, budgets: bool = False, profiles: bool = False) -> list[Backend]:
    """The registered backends, default first; only those that measure budgets or profile layers if asked."""
    _discover()
    return _chosen(_REGISTRY.values(), budgets, profiles)


def described(*, budgets: bool = False, profiles: bool = False) -> list[Facts]:
    """`backends()`'s facts, read without importing a backend: the shipped backends' until the registry is read
    (a plug-in is registered only then), the registered backends themselves after."""
    return _chosen(_REGISTRY.values() if _DISCOVERED else SHIPPED, budgets, profiles)


def _chosen(known, budgets: bool, profiles: bool) -> list:
    chosen = [b for b in known if (b.budgets or not budgets) and (b.profiles or not profiles)]
    return sorted(chosen, key=lambda backend: (backend.rank, backend.name))


def names(*, budgets: bool = False, profiles: bool = False) -> list[str]:
    return [backend.name for backend in described(budgets=budgets, profiles=profiles)]


def budget_precisions() -> list[str]:
    """Every precision some budget backend measures at."""
    return list(dict.fromkeys(p for backend in described(budgets=True) for p in backend.precisions))


def get(name: str, *, budgets: bool = False) -> Backend:
    """The backend called `name`, or a one-line MeasurementError listing the choices."""
    _discover()
    backend = _REGISTRY.get(name)
    if backend is None or (budgets and not backend.budgets):
        what = "budget backend" if budgets else "backend"
        raise MeasurementError(f"unknown {what} {name!r}: choose one of {', '.join(names(budgets=budgets))}")
    return backend


def width_multiple(backend: str, precision: str = "fp32", *, cpuinfo: str | None = None) -> int:
    """The width multiple `backend` runs fastest at `precision` (runtime/measure/width_multiple.py); `cpuinfo` replaces
    /proc/cpuinfo's text for a backend that reads the CPU's flags."""
    _discover()
    if backend not in _REGISTRY:
        raise MeasurementError(f"no width multiple known for backend {backend!r} at precision {precision!r}: "
                               f"choose one of {', '.join(names())}")
    chosen = _REGISTRY[backend]
    return chosen.width_multiple(precision, cpuinfo=cpuinfo) if cpuinfo is not None else chosen.width_multiple(precision)


def label(name: str) -> str:
    """The human name of backend `name` ("ONNX Runtime"), the name itself for one not registered."""
    known = {backend.name: backend for backend in described()}
    return known[name].label if name in known else name


def markdown_table() -> str:
    """The docs table of the registered backends (docs/backends.md holds it; a test keeps the two equal)."""
    lines = ["| `--backend` | runs on | needs | budget precisions | width multiple | profile |",
             "|---|---|---|---|---|---|"]
    for backend in backends():
        precisions = ", ".join(backend.precisions) if backend.budgets else "bench only"
        multiples = backend.width_text() if backend.budgets else "-"
        lines.append(f"| `{backend.name}` | {backend.label} | {backend.needs} | {precisions} | {multiples} | "
                     f"{'yes' if backend.profiles else 'no'} |")
    return "\n".join(lines)


__all__ = ["markdown_table", "Backend", "BenchModel", "Settings", "backends", "budget_precisions", "described", "get", "label",
           "names", "register", "unregister"]
