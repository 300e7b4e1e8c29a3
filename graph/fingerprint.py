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
    """sha256 of the graph's code, its input shapes, its mode and the bytes of every tensor it reads."""
    digest = hashlib.sha256(program.module.code.encode())
    digest.update(repr([tuple(x.shape) for x in program.example_inputs]).encode() + bytes([program.training]))
    for node in program.graph.nodes:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(program.module)
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                digest.update(f"{node.target}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read a megabyte at a time (a model file can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
