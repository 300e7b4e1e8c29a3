"""Fingerprints. A Program's: what a measurement or an export of it depends on, so that a Program met again (a
budget search's candidate confirmed after its first reading, the chosen model written as the deliverable) is
recognised by its contents, whichever object holds them. A file's: its bytes' sha256, read in chunks."""

from __future__ import annotations

import hashlib
import operator
from pathlib import Path

import torch

from prunefx.graph.program import Program


def fingerprint(program: Program) -> str:
    """sha256 of the code of the graph and of the graphs nested in it, its input shapes and dtypes, its mode and the
    bytes of every tensor they read."""
    digest = hashlib.sha256(graph_code(program.module).encode())
    digest.update(repr([(tuple(x.shape), x.dtype) for x in program.example_inputs]).encode()
                  + bytes([program.training]))
    for path, graph_module in _graph_modules(program.module):
        for node in graph_module.graph.nodes:
            if node.op == "get_attr":
                value = operator.attrgetter(node.target)(graph_module)
                if isinstance(value, torch.Tensor):
                    tensor = value.detach().cpu().contiguous()
                    digest.update(f"{path}.{node.target}{tuple(tensor.shape)}{tensor.dtype}".encode())
                    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # read in place, not copied
    return digest.hexdigest()


def graph_code(module: torch.nn.Module) -> str:
    """The code of `module`'s graph and of every graph nested in it, each under its path: torch.export captures a
    `with torch.no_grad():` or autocast block as a graph of its own, which the outer code only calls."""
    return "\n".join(f"# {path}\n{graph_module.code}" for path, graph_module in _graph_modules(module))


def _graph_modules(module: torch.nn.Module) -> list[tuple[str, torch.fx.GraphModule]]:
    return [(path, sub) for path, sub in module.named_modules() if isinstance(sub, torch.fx.GraphModule)]


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read a megabyte at a time (a model file can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
