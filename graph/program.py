"""Program: a captured model as an fx GraphModule (parameters reached by get_attr nodes), its
example inputs, and the analysis results attached to it by passes.

A Program can be run, trained, re-exported (the validity check), saved as a `.pt2` archive
(torch.export's format: a JSON graph plus tensor data, no pickled Python classes) and reloaded.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.export.passes import move_to_device_pass

from prunefx.graph.analysis_record import Analysis, AnalysisRecordError
from prunefx.graph.attributes import delete_unused_tensors, get_tensor
from prunefx.graph.errors import ProgramFileError, PrunefxError, VerificationError, first_line, printable
from prunefx.graph.export_refresh import with_current_tensors
from prunefx.graph.node_names import node_names, restore_node_names
from prunefx.graph.program_file import read_program_file, write_program_file
from prunefx.graph.program_metadata import (
    FORMAT_VERSION,
    INPUT_DTYPES,
    input_record,
    normalisation_record,
    parse_metadata,
    program_name,
)
from prunefx.graph.safety.graph_bounds import recompute_shapes
from prunefx.graph.shape_propagation import propagate_shapes
from prunefx.graph.stack_traces import stack_traces_off, without_stack_traces
from prunefx.graph.training_flags import (
    Modes,
    graph_training_mode,
    modes_of,
    restore_modes,
    set_module_attributes,
    set_training,
    settle_batch_counters,
)
from prunefx.graph.whole_files import file_path

_PROPAGATION = "prunefx_propagation"  # node.meta key: which shape propagation last saw the node


class Program:
    """A captured model. `module` is the torch.fx.GraphModule; `example_inputs` a tuple of tensors."""

    def __init__(self, module: torch.fx.GraphModule, example_inputs: tuple[torch.Tensor, ...], *,
                 name: str = "model", analysis: Analysis | None = None,
                 output_shapes: list[tuple[int, ...]] | None = None):
        if not isinstance(module, torch.fx.GraphModule):
            raise PrunefxError(f"Program wraps the torch.fx.GraphModule of a captured model, not "
                               f"{type(module).__name__}: prunefx.capture(model, inputs) makes one")
        self.module = module
        self.example_inputs = tuple(example_inputs)
        self.name = name
        # The output shapes at capture time: every pass must keep them (checked by verify()).
        self.output_shapes = output_shapes if output_shapes is not None else current_output_shapes(module)
        # What passes hand to later passes (graph/analysis_record.py), saved with the Program.
        self.analysis: Analysis = analysis if analysis is not None else Analysis()
        # The per-channel (mean, std) the model's images are normalised with, where known (a timm model's
        # pretrained configuration, the command line's --mean/--std): saved, so that later commands read images
        # as the model expects them. None: not known (prunefx/data/normalise.py then uses ImageNet's).
        self.normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._exported: tuple[tuple, torch.export.ExportedProgram] | None = None  # see export()

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        """Kept as a saved file reads it back (graph/program_metadata.py): what save writes, load returns."""
        name = program_name(value)
        if name is None:
            raise PrunefxError(f"a Program's name must be non-empty text, not {printable(repr(value))[:60]}")
        self._name = name

    @classmethod
    def from_exported(cls, exported: torch.export.ExportedProgram, example_inputs, *, name: str) -> Program:
        module = exported.module()
        program = cls(module, tuple(example_inputs), name=name)
        settle_batch_counters(module)
        set_module_attributes(module, graph_training_mode(module.graph))
        return program

    # --- running -------------------------------------------------------------------------------
    def __call__(self, *inputs: torch.Tensor):
        return self.module(*inputs)

    def run_example(self):
        with torch.no_grad():
            return self.module(*self.example_inputs)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.module.graph

    @property
    def training(self) -> bool:
        return graph_training_mode(self.module.graph)

    def train(self, mode: bool = True) -> Program:
        """Flip the training flag of every batch norm and dropout inside the graph."""
        if not isinstance(mode, bool):  # as torch's Module.train: "no" would be truthy
            raise PrunefxError(f"Program.train takes True or False, not {mode!r:.60}")
        set_training(self.module, mode)
        return self

    def eval(self) -> Program:
        return self.train(False)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[Program]:
        """Eval mode inside the `with` block, the previous modes after it (`modes`, `restore_modes`): for reading
        the activations the deployed network sees without moving training-mode batch-norm statistics."""
        modes = self.modes()
        self.eval()
        try:
            yield self
        finally:
            self.restore_modes(modes)

    def modes(self) -> Modes:
        """Every training flag of the graph and every submodule's `training`, to put back with `restore_modes`
        (graph/training_flags.py)."""
        return modes_of(self.module)

    def restore_modes(self, modes: Modes) -> None:
        """Each flag and attribute as `modes` recorded it (a frozen batch norm in a training Program stays frozen,
        where `train(mode)` sets them all alike)."""
        restore_modes(self.module, modes)

    # --- parameters ----------------------------------------------------------------------------
    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.module.parameters()

    def named_parameters(self):
        return self.module.named_parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    # --- graph maintenance ---------------------------------------------------------------------
    def recompile(self) -> None:
        """Regenerate code after a graph rewrite and refresh every node's shape metadata."""
        self.recompile_keeping_shapes()
        self.refresh_meta()

    def recompile_keeping_shapes(self) -> None:
        """recompile() after a rewrite that leaves every remaining node's shape as it was and gives each node it
        adds its own (merge_blocks' exact merges): the shapes are not propagated again until refresh_meta is asked."""
        self.module.graph.eliminate_dead_code()
        self._regenerate()

    def drop_dead_code(self) -> bool:
        """Remove the nodes nothing reads, and the tensors and submodules only they held; True if any went. The
        nodes left compute what they did, so their shape metadata stays (recompile would propagate it again:
        capture leaves a dead read of every batch norm's num_batches_tracked)."""
        if not self.module.graph.eliminate_dead_code():
            return False
        self._regenerate()
        return True

    def _regenerate(self) -> None:
        """The code of the graph as it now is, without the tensors and submodules no node reads."""
        self._exported = None  # the graph changed: a kept export would also keep the tensors it replaced
        delete_unused_tensors(self.module)
        self.module.delete_all_unused_submodules()
        self.module.recompile()

    def refresh_meta(self) -> None:
        """Re-run shape propagation with fake tensors so node.meta['val'] matches the rewritten graph.
        It reads only the graphs, the tensors' shapes and the inputs' shapes: when none changed since the last
        one, the metadata is kept (verify() after a pass that recompiled would propagate the same graph twice)."""
        key = _propagation_key(self)
        last = getattr(self, "_propagated", None)
        if last is not None and last[0] == key and _all_propagated(self.module, last[1]):
            return
        propagate_shapes(self.module, self.example_inputs)
        stamp = object()
        for node in _all_nodes(self.module):
            node.meta[_PROPAGATION] = stamp
        self._propagated = (key, stamp)

    def adopt(self, other: Program) -> None:
        """Become `other` (its module, inputs, name, analysis and output shapes): a pass declared in place that
        got a new Program (a checkpoint read back) still hands back the Program it was given."""
        vars(self).clear()
        vars(self).update(vars(other))

    def clone(self) -> Program:
        copied = Program(copy.deepcopy(self.module), tuple(x.clone() for x in self.example_inputs), name=self.name,
                         analysis=copy.deepcopy(self.analysis), output_shapes=list(self.output_shapes))
        copied.normalisation = self.normalisation
        return copied

    def to_exported(self) -> torch.export.ExportedProgram:
        """The rewritten model as a torch.export ExportedProgram (static shapes: those of the example
        inputs), with its own copy of the weights: later rewrites of this Program do not reach it."""
        return self.clone().export()

    def export(self) -> torch.export.ExportedProgram:
        """Re-export the rewritten module: its success is the validity check every pass must pass (docs/design.md).
        The result is kept until the Program changes (a graph, a tensor replaced, reshaped, retyped or moved, the
        inputs' shapes), so that the Pipeline's check, model.pt2 and the ONNX export share one export. It holds
        the Program's own tensors, not copies: read it, do not change it (to_exported gives one to keep)."""
        key = (_propagation_key(self), _tensor_identities(self.module), tuple(map(id, self.example_inputs)))
        if self._exported is not None and self._exported[0] == key:
            return self._exported[1]
        refreshed = self._refreshed(key)
        if refreshed is not None:
            self._exported = (key, refreshed)
            return refreshed
        self._exported = None
        try:
            with stack_traces_off():  # they would point into the generated code
                exported = without_stack_traces(torch.export.export(self.module, self.example_inputs, strict=False))
        except Exception as error:
            raise VerificationError(f"program '{self.name}' no longer exports: "
                                    f"{first_line(error)}") from error
        self._exported = (key, exported)
        return exported

    def _refreshed(self, key: tuple) -> torch.export.ExportedProgram | None:
        """The kept export with the tensors replaced since, when nothing else changed (graph/export_refresh.py)."""
        if self._exported is None:
            return None
        kept_key, kept = self._exported
        same_names = [name for name, _ in kept_key[1]] == [name for name, _ in key[1]]
        if kept_key[0] != key[0] or kept_key[2] != key[2] or not same_names:
            return None
        replaced = {name for (name, before), (_, now) in zip(kept_key[1], key[1]) if before != now}
        return with_current_tensors(kept, self.module, replaced)

    # --- persistence (graph/program_file.py) ---------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        dtypes = [str(x.dtype).removeprefix("torch.") for x in self.example_inputs]
        refused = [dtype for dtype in dtypes if dtype not in INPUT_DTYPES]
        if refused:  # a load makes inputs of the recorded dtypes: a file it would refuse is not written
            raise PrunefxError(f"cannot save {self.name}: an input of dtype torch.{refused[0]}, which a load cannot "
                               f"make (it makes {', '.join(sorted(INPUT_DTYPES))})")
        metadata = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "inputs": [input_record(x) for x in self.example_inputs],
            "output_shapes": [list(shape) for shape in self.output_shapes],
            "analysis": self.analysis.to_json(),
            "nodes": node_names(self.module),
            **({"normalisation": normalisation_record(self.normalisation)} if self.normalisation is not None else {}),
        }
        try:  # a record the next load would refuse (too many inputs, statistics out of range) is not written
            parse_metadata(json.dumps(metadata), f"cannot save {self.name}")
        except ProgramFileError as error:
            raise PrunefxError(str(error)) from None
        return write_program_file(file_path(path), self._exported_on_cpu(), metadata)

    def _exported_on_cpu(self) -> torch.export.ExportedProgram:
        """The export to save, on the CPU: torch.export.save writes each tensor's device and torch.export.load
        puts it back there, so a file saved from a GPU would not load on a machine without one."""
        if not self._off_cpu():
            return self.export()
        return move_to_device_pass(self.to_exported(), "cpu")  # a copy: the Program stays

    def _off_cpu(self) -> bool:
        attributes = [tensor for _, tensor in _attribute_tensors(self.module)]
        tensors = [*self.module.parameters(), *self.module.buffers(), *attributes, *self.example_inputs]
        return any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tensors)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Program:
        """Read a `.pt2` written by `save` (or torch.export.save), audited and checked (graph/program_file.py);
        every failure is one ProgramFileError."""
        path = Path(path)
        exported, metadata, inputs = read_program_file(path)
        try:
            program = cls.from_exported(exported, inputs, name=metadata.get("name", printable(path.stem)))
        except Exception as error:  # a graph torch could read but not rebuild into a module
            raise ProgramFileError(f"cannot rebuild program {path}: {first_line(error)}") from error
        restore_node_names(program.module, metadata.get("nodes", []))
        # the file's recorded shapes are claims: every figure reported comes from the graph (graph_bounds.py)
        recompute_shapes(program.module, program.example_inputs, printable(str(path)))
        program.output_shapes = current_output_shapes(program.module)
        try:
            program.analysis = Analysis.from_json(metadata.get("analysis", {}))
        except AnalysisRecordError as error:
            raise ProgramFileError(f"{path}: {error}") from error
        program.normalisation = metadata.get("normalisation")
        stored = [tuple(shape) for shape in metadata.get("output_shapes", program.output_shapes)]
        if stored != program.output_shapes:
            raise ProgramFileError(f"{path}: prunefx.json says the outputs are {stored}, the graph computes "
                                   f"{program.output_shapes}")
        return program


def require_program(value: object, taker: str) -> None:
    """A one-line PrunefxError where `taker` is handed something else than a Program (a module, a path)."""
    if isinstance(value, Program):
        return
    if isinstance(value, (str, os.PathLike)):
        hint = "prunefx.load(path) reads a saved one"
    else:
        hint = "prunefx.capture(model, inputs) makes one"
    raise PrunefxError(f"{taker} takes a prunefx Program ({hint}), not {type(value).__name__}")


def current_output_shapes(module: torch.fx.GraphModule) -> list[tuple[int, ...]]:
    """Shapes of the graph's tensor outputs, in flattened order, from the shape metadata."""
    output = next(node for node in reversed(module.graph.nodes) if node.op == "output")
    leaves = pytree.tree_leaves(output.args[0])
    values = [leaf.meta.get("val") for leaf in leaves if isinstance(leaf, torch.fx.Node)]
    return [tuple(int(s) for s in v.shape) for v in values if isinstance(v, torch.Tensor)]


def _propagation_key(program: Program) -> tuple:
    """Everything shape propagation reads: each graph's text (nodes, targets, arguments), the shape, dtype and
    device of every tensor its get_attr nodes reach, and the example inputs' shapes and dtypes."""
    tensors = [(name, tuple(t.shape), t.dtype, t.device) for name, t in _attribute_tensors(program.module)
               if isinstance(t, torch.Tensor)]
    inputs = [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else repr(x)
              for x in pytree.tree_leaves(program.example_inputs)]
    return tuple(str(m.graph) for m in _graph_modules(program.module)), tuple(tensors), tuple(inputs)


def _graph_modules(module: torch.nn.Module) -> list[torch.fx.GraphModule]:
    return [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)]


def _attribute_tensors(module: torch.nn.Module) -> list[tuple[str, object]]:
    """(target, value) of every get_attr node of the module's graphs: what `Module.to` may not reach."""
    return [(node.target, get_tensor(m, node.target)) for m in _graph_modules(module)
            for node in m.graph.find_nodes(op="get_attr")]


def _tensor_identities(module: torch.nn.Module) -> tuple[tuple[str, int], ...]:
    """Which tensor objects the module holds: the kept export holds them (and the example inputs) too, so an id
    cannot be reused by a replacement while the export that refers to it is kept."""
    return tuple((name, id(tensor)) for name, tensor in (*module.named_parameters(), *module.named_buffers()))


def _all_nodes(module: torch.fx.GraphModule) -> Iterator[torch.fx.Node]:
    return (node for m in module.modules() if isinstance(m, torch.fx.GraphModule) for node in m.graph.nodes)


def _all_propagated(module: torch.fx.GraphModule, stamp: object) -> bool:
    """Every node went through the last propagation (a node built anew, even with the same text, did not)."""
    return all(node.meta.get(_PROPAGATION) is stamp for node in _all_nodes(module))
