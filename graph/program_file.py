"""A Program's file: a torch.export `.pt2` archive with a `prunefx.json` record beside the graph.

Writing streams the archive into a partial file that takes its name only once complete. Reading treats the file
as input from anyone: the archive is audited before torch reads it, the graph may write only into its own
tensors, and the record is checked field by field against the graph. Every failure is one ProgramFileError.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prunefx.graph.errors import ProgramFileError, first_line, printable
from prunefx.graph.held_signals import signals_held
from prunefx.graph.program_metadata import MAX_INPUT_ELEMENTS, check_against_graph, parse_metadata
from prunefx.graph.safety.archive import safe_load
from prunefx.graph.safety.functional_ops import check_writes
from prunefx.graph.whole_files import replaced_whole
from prunefx.graph.zip_target import FailureHoldingFile

_METADATA_FILE = "prunefx.json"
_ROOT_KEY = "L__self__"  # torch.export's prefix of every nn_module_stack key


def write_program_file(path: Path, exported: torch.export.ExportedProgram, metadata: dict) -> Path:
    # Through a file that holds a failed write instead of raising it into torch's zip writer (graph/zip_target.py),
    # with Ctrl-C held until the writer is done (an interrupt raised into it aborts the process: graph/held_signals.py);
    # the file appears under its name only once complete (graph/whole_files.py).
    with replaced_whole(path) as partial, open(partial, "wb") as file:
        target = FailureHoldingFile(file)
        with signals_held():
            torch.export.save(exported, target, extra_files={_METADATA_FILE: json.dumps(metadata)})
        target.raise_held()
    return path


def read_program_file(path: Path) -> tuple[torch.export.ExportedProgram, dict, tuple[torch.Tensor, ...]]:
    """The audited graph, its checked record (`{}` for a plain torch.export.save archive) and example inputs of
    the recorded shapes and dtypes."""
    if not path.exists():
        raise ProgramFileError(f"no such program file: {path}")
    extra = {_METADATA_FILE: ""}
    try:
        exported = safe_load(path, extra)
    except ProgramFileError:
        raise
    except Exception as error:
        raise ProgramFileError(f"cannot read program {path}: {first_line(error)}") from error
    _forget_earlier_exports(exported)
    written = check_writes(exported)
    if written is not None:
        raise ProgramFileError(f"{path}: {printable(written)[:200]} (refused: a saved graph may write only into "
                               "tensors it makes and into its buffers)")
    metadata = parse_metadata(extra[_METADATA_FILE], str(path))
    check_against_graph(metadata, exported, str(path))
    try:
        inputs = _example_inputs(metadata, exported)
    except Exception as error:
        raise ProgramFileError(f"cannot rebuild program {path}: {first_line(error)}") from error
    return exported, metadata, inputs


def _forget_earlier_exports(exported: torch.export.ExportedProgram) -> None:
    """Node metadata as a first export writes it. Saving re-exports the graph, and each re-export nests every node's
    `from_node` one level deeper and puts one more `L__self__` before each nn_module_stack key: without this, a file
    grew with every load-save cycle. The stack's module paths and call numbers (`@2`), which prunefx reads, stay."""
    for module in exported.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            node.meta.pop("from_node", None)  # torch's provenance of the graph it was exported from; prunefx reads none
            stack = node.meta.get("nn_module_stack")
            if stack:
                node.meta["nn_module_stack"] = {_one_root(key): value for key, value in stack.items()}


def _one_root(key: str) -> str:
    while key.startswith(_ROOT_KEY * 2):
        key = key[len(_ROOT_KEY):]
    return key


def _example_inputs(metadata: dict, exported: torch.export.ExportedProgram) -> tuple[torch.Tensor, ...]:
    """Floating inputs drawn from a fixed seed; integer and boolean ones as the record stores them, else zeros."""
    generator = torch.Generator().manual_seed(0)  # its own: loading leaves the process's random state alone
    if metadata.get("inputs"):
        return tuple(_example_input(spec["shape"], getattr(torch, spec["dtype"]), generator, spec.get("values"))
                     for spec in metadata["inputs"])
    # An archive written by torch.export.save directly: inputs from the placeholders' metadata.
    values = [node.meta["val"] for node in exported.graph.nodes
              if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs]
    for value in values:
        if value.numel() > MAX_INPUT_ELEMENTS:
            raise ProgramFileError(f"an input of shape {tuple(value.shape)} is too large to allocate (refused)")
    return tuple(_example_input(tuple(v.shape), v.dtype, generator) for v in values)


def _example_input(shape, dtype: torch.dtype, generator: torch.Generator, values: list[int] | None = None
                   ) -> torch.Tensor:
    if values is not None:
        return torch.tensor(values, dtype=torch.int64).to(dtype).reshape(shape)
    if dtype.is_floating_point:  # bfloat16 too
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)
