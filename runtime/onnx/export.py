"""Lower a Program to a single, cleaned, checked ONNX file.

The dynamo exporter runs first on the Program's re-exported `ExportedProgram` (nothing traced twice); a model
it cannot take goes through the TorchScript exporter, with the reason in `fallback_reason`. The result is
cleaned with onnx-graphsurgeon and checked with `onnx.checker`. Inputs and outputs are named input_N /
output_N in the Program's flattened order; a Program in training mode is exported from an eval-mode copy.
See docs/design.md, 'Runtime and measurement'.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from prunefx.graph import Program
from prunefx.graph.heap import release_freed_memory
from prunefx.graph.program import require_program
from prunefx.graph.stack_traces import stack_traces_off
from prunefx.graph.whole_files import file_path, followed, replaced_whole
from prunefx.runtime.errors import OnnxExportError, describe_failure
from prunefx.runtime.onnx.attention_dims import attention_in_four_dims
from prunefx.runtime.onnx.cleanup import APART, clean_graph
from prunefx.runtime.onnx.export_memo import copy_of_written, export_key, remember_written
from prunefx.runtime.onnx.external import (
    own_side_files,
    remove_stale_side_files,
    rename_external_data,
    side_file_name,
)
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET, MIN_OPSET, max_opset
from prunefx.runtime.onnx.reshape_layout import contiguous_before_reshapes
from prunefx.runtime.onnx.torchlib_registry import registries_reused
from prunefx.runtime.onnx.write import is_apart, little_endian_bytes, save_model_streamed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxExport:
    """What export_onnx wrote and how: `exporter` is 'dynamo' or 'torchscript'."""

    path: Path
    exporter: str
    fallback_reason: str | None
    node_count: int
    raw_node_count: int  # nodes as the exporter produced them, before graph-surgeon cleanup


EXPORTERS = {"dynamo": ("dynamo", "torchscript"), "torchscript": ("torchscript", "dynamo")}  # tried in order
EXPORTER_NAMES = {"dynamo": "dynamo", "torchscript": "TorchScript"}


def export_onnx(program: Program, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo") -> OnnxExport:
    """Export `program` (in eval mode) to the ONNX file `path`, cleaned and checked. `exporter` is tried
    first and the other one if it fails: "dynamo" (the default, what prunefx delivers) or "torchscript"
    (5 to 15 times faster; runtime/measure/speedup.py uses it for the many candidates of a budget search).
    The file appears under `path` only once written and checked: a failed or interrupted export leaves a
    previous file there as it was (graph/whole_files.py). A Program this process exported before with dynamo and
    the same opset is a copy of that file, where it is still there unchanged (runtime/onnx/export_memo.py)."""
    require_program(program, "export_onnx")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise OnnxExportError(f"ONNX opset {opset!r} is outside what the exporter writes ({MIN_OPSET} to {max_opset()})")
    if exporter not in EXPORTERS:
        raise OnnxExportError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    path = file_path(path)
    program = program.clone().eval() if program.training else program
    # The files prunefx delivers (dynamo) are remembered: a budget's confirmation exported the chosen model as
    # model.onnx is written. Not a search's many TorchScript readings, whose hashing would only add time.
    key = export_key(program, opset, exporter) if exporter == "dynamo" else None
    copied = copy_of_written(key, path) if key is not None else None  # exported before: a copy of that file
    if copied is not None:
        return copied
    first, second = EXPORTERS[exporter]
    exporters = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    exporter, fallback_reason = first, None
    try:
        model, weights = exporters[first](program, opset)
    except Exception as first_error:  # torch.onnx raises many types; all mean "this exporter failed"
        exporter, fallback_reason = second, describe_failure(first_error)
        log.warning("%s: the %s exporter failed (%s); trying the %s exporter", program.name,
                    EXPORTER_NAMES[first], fallback_reason, EXPORTER_NAMES[second])
        try:
            model, weights = exporters[second](program, opset)
        except Exception as second_error:
            raise OnnxExportError(
                f"could not export model '{program.name}' to ONNX: {EXPORTER_NAMES[first]} exporter: "
                f"{fallback_reason}; {EXPORTER_NAMES[second]} exporter: {describe_failure(second_error)}") \
                from second_error
    raw_node_count = len(model.graph.node)
    model, apart = clean_graph(model, weights)
    del weights
    # graph-surgeon's graph is cyclic (nodes and tensors refer to each other) and holds the exporter's model,
    # every weight in it: collected now rather than at some later collection, after the file is written
    gc.collect()
    release_freed_memory()  # before serialising the model: a buffer of the weights' size (graph/heap.py)
    node_count = len(model.graph.node)
    # Under hidden names until checked (`path` is the checked file or, after a failure, as it was). Weights
    # over 2 GB go to a hidden side file too, given their name only then: onnx refuses to write over one.
    target, moved_in = followed(path), None
    try:
        with replaced_whole(path) as partial:
            side = partial.with_name(f"{partial.name}.data")
            try:
                written = _save(model, partial, apart, data_name=side.name)
                del model, apart  # the checker reads the file: one copy of the weights in memory at a time
                release_freed_memory()
                _check_file(partial, program.name)
                if side in written:
                    shutil.copymode(partial, side)  # onnx creates it 0600, not with the user's umask
                    moved_in = target.parent / side_file_name(target)
                    rename_external_data(partial, moved_in.name)
            finally:
                side.unlink(missing_ok=True)
    except BaseException:  # stopped before the file that reads them replaced the old one: no orphaned weights
        if moved_in is not None and moved_in.name not in own_side_files(target):
            moved_in.unlink(missing_ok=True)
        raise
    remove_stale_side_files(target, keep=None if moved_in is None else moved_in.name)
    made = OnnxExport(path=path, exporter=exporter, fallback_reason=fallback_reason, node_count=node_count,
                      raw_node_count=raw_node_count)
    if key is not None:
        remember_written(key, made)
    return made


def _export_dynamo(program: Program, opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The exported model and its floating-point weights apart (see _weights_apart)."""
    # program.export() raises VerificationError if the module no longer exports; the dynamo exporter
    # would fail the same way, so that error simply becomes the fallback reason.
    onnx_program = dynamo_onnx_program(program, opset)
    weights = _weights_apart(onnx_program.model)
    return onnx_program.model_proto, weights


def dynamo_onnx_program(program: Program, opset: int) -> torch.onnx.ONNXProgram:
    """The dynamo exporter's ONNXProgram of `program`, from its ExportedProgram (runtime/onnx/quantized.py's
    export too). The exporter's decompositions trace the graph again: without stack traces, which no file keeps."""
    # attention folded to the 4-D inputs the exporter translates (attention_dims.py), and with a mask left in float
    # (reshape_layout.py)
    exported = contiguous_before_reshapes(attention_in_four_dims(program.export()))
    with registries_reused(), stack_traces_off():
        onnx_program = torch.onnx.export(exported, program.example_inputs, dynamo=True, opset_version=opset,
                                         external_data=False, optimize=True, verbose=False)
    assert onnx_program is not None  # None only when given a file to write
    return onnx_program


_FLOAT_WEIGHTS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def _weights_apart(model: ir.Model) -> dict[str, np.ndarray]:
    """Take the floating-point initializers out of the exporter's model, leaving each as a typed reference to
    external data, so that the model serialises without them; their values as numpy arrays, views of the
    Program's own tensors where the exporter kept those. The cleanup then reads them where it must (constant
    folding) and writes each once, into the cleaned model: one copy of the weights, not three."""
    weights = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or isinstance(tensor, ir.ExternalTensor) or tensor.dtype not in _FLOAT_WEIGHTS:
            continue
        weights[name] = tensor.numpy()
        value.const_value = ir.ExternalTensor(APART, 0, tensor.nbytes, tensor.dtype, shape=ir.Shape(tensor.shape.numpy()),
                                              name=name)
    return weights


def _export_torchscript(program: Program, opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated, and the tracer warns about the input-shape
        # guards that torch.export puts in the module: both are expected here and not actionable.
        warnings.simplefilter("ignore")
        # PRESERVE: the exporter's default (EVAL) calls module.train(False), which a module that torch.export made
        # refuses ("Calling train() is not supported yet"); the graph is in eval mode already (export_onnx)
        with _training_attributes_off(program.module):
            torch.onnx.export(program.module, program.example_inputs, buffer, dynamo=False, opset_version=opset,
                              do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE)
    return onnx.load_model_from_string(buffer.getvalue()), {}


@contextlib.contextmanager
def _training_attributes_off(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule's `training` attribute False inside the block (PRESERVE then exports for inference), as it
    was after. Attributes only: module.train() is not called, and the graph's own flags are untouched."""
    before = [(submodule, submodule.training) for submodule in module.modules()]
    for submodule, _ in before:
        submodule.training = False
    try:
        yield
    finally:
        for submodule, mode in before:
            submodule.training = mode


def _save(model: onnx.ModelProto, path: Path, apart: dict[str, np.ndarray], data_name: str) -> list[Path]:
    """Write `model`, the initializers named in `apart` from those arrays; the files written. One
    self-contained file whenever protobuf allows it (2 GB); only larger models need the weights in a side
    file, `data_name` beside `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _weight_bytes(model, apart) < onnx.checker.MAXIMUM_PROTOBUF - STRUCTURE_HEADROOM:
        # onnx.save_model's bytes, one initializer serialised at a time (runtime/onnx/write.py)
        if save_model_streamed(model, path, apart) < onnx.checker.MAXIMUM_PROTOBUF:
            return [path]
        path.unlink()  # a structure larger than the headroom: the weights go beside it after all
    for tensor in model.graph.initializer:  # onnx's external-data writer takes the data from the tensors
        if is_apart(tensor, apart):
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            tensor.raw_data = little_endian_bytes(apart[tensor.name]).tobytes()
    data = path.with_name(data_name)
    onnx.save_model(model, path, save_as_external_data=True, location=data.name)
    return [path, data] if data.exists() else [path]  # onnx keeps tensors under 1 KB inside: all of them, maybe


def _check_file(path: Path, name: str) -> None:
    """onnx.checker on the written file (it follows external data from there). A file that fails is removed by
    the caller's cleanup, as after any other failure (export_onnx)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise OnnxExportError(f"the ONNX graph of model '{name}' fails onnx.checker: "
                              f"{describe_failure(error)}") from error


# Room left for everything but the weights (nodes, names, provenance) below protobuf's 2 GB: the size of
# the whole message is not asked of protobuf, which serialises the model to count it (a copy of every weight).
STRUCTURE_HEADROOM = 256 << 20


def _weight_bytes(model: onnx.ModelProto, apart: dict[str, np.ndarray] | None = None) -> int:
    """The bytes the initializers take when serialised, from their shapes (raw data and those held `apart`:
    element size; values in typed fields: at most 10 bytes each, a varint's longest)."""
    total = 0
    for tensor in model.graph.initializer:
        elements = math.prod(tensor.dims)
        if tensor.HasField("raw_data") or is_apart(tensor, apart or {}):
            total += elements * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        else:
            total += elements * 10 + sum(len(value) for value in tensor.string_data)
    return total
