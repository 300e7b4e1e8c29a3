"""The latency backends, by name: every module of this package that defines `BACKEND` (a base.Backend) is one.

Budgets (`latency_pair`), the speed-up measure handed to passes, `prunefx bench`, `prunefx profile`, the CLI's
`--backend` choices, the budget report's runtime names and the docs table all read this registry, so a new
backend is one new file here. `register`/`unregister` add or remove one at run time (a plug-in, a test).
"""

from __future__ import annotations

import importlib
import pkgutil

from prunefx.runtime.backends.base import Backend, BenchModel, Settings
from prunefx.runtime.errors import MeasurementError

_REGISTRY: dict[str, Backend] = {}
_DISCOVERED = False
_NOT_BACKENDS = {"base"}


def _discover() -> None:
    """Import every backend module of this package once (lazily: the runtime imports the registry early)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
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
    chosen = [b for b in _REGISTRY.values() if (b.budgets or not budgets) and (b.profiles or not profiles)]
    return sorted(chosen, key=lambda backend: (backend.rank, backend.name))


def names(*, budgets: bool = False, profiles: bool = False) -> list[str]:
    return [backend.name for backend in backends(budgets=budgets, profiles=profiles)]


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
    _discover()
    return _REGISTRY[name].label if name in _REGISTRY else name


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


__all__ = ["markdown_table", "Backend", "BenchModel", "Settings", "backends", "get", "label", "names", "register", "unregister"]
