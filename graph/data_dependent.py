"""Refuse a captured graph whose shapes depend on tensor values, naming the module that made it so.

`.item()`, `nonzero`, NMS and the like export fine but leave a size that only the data decides: every pass
that propagates shapes again then fails on an ATen name the user never wrote. The capture refuses such a
graph instead, in one line that names the module, its source line and what to do about it.
"""

from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from prunefx.graph.errors import CaptureError

# Advice by the library a module comes from (its class's module path); text only, nothing is imported.
_LIBRARY_ADVICE = {
    "ultralytics.": "an Ultralytics model: call prunefx.models.prepare_ultralytics(model) first, which puts its "
                    "head in export mode as `prunefx prune ultralytics:...` does",
}
_GENERIC_ADVICE = ("put that module in its export (deploy) mode, or prune the backbone and neck alone: "
                   "prunefx.prune_part(model, inputs, pipeline, part=...) (or `prunefx prune --part ...`)")


def _data_dependent(node: torch.fx.Node) -> bool:
    try:
        return bool(free_unbacked_symbols(node.meta.get("val")))
    except Exception:  # a meta value of a kind the symbolic-shape helpers do not know: not ours to judge
        return False


def _module(node: torch.fx.Node) -> tuple[str, str]:
    """(path, class path) of the innermost module that called `node`; ('', '') at the model's own level."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return "", ""
    path, cls = stack[-1]
    cls_path = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return path, cls_path


def _source(node: torch.fx.Node) -> str:
    """' (file.py:LINE: code)' of the user's line that made `node`, from export's stack trace."""
    lines = [line.strip() for line in (node.meta.get("stack_trace") or "").splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("File "):
            parts = lines[index].split('"')
            file = parts[1].rsplit("/", 1)[-1] if len(parts) > 1 else ""
            line = lines[index].split("line ")[-1].split(",")[0]
            code = lines[index + 1] if index + 1 < len(lines) else ""
            return f" ({file}:{line}: {code[:80]})"
    return ""


def check_static_shapes(graph: torch.fx.Graph, name: str) -> None:
    """CaptureError naming the first node whose value or shape depends on tensor data, if any."""
    for node in graph.nodes:
        if node.op == "call_function" and _data_dependent(node):
            path, cls_path = _module(node)
            library = next((advice for prefix, advice in _LIBRARY_ADVICE.items() if cls_path.startswith(prefix)), None)
            where = f"module '{path or '(model)'}' ({cls_path.rsplit('.', 1)[-1] or type(node).__name__})"
            raise CaptureError(
                f"could not capture model '{name}': {where} calls {node.target}{_source(node)}, whose result "
                f"depends on the tensor values, so no pass can propagate shapes through it. Fix: "
                f"{library or _GENERIC_ADVICE}")
