"""The ONNX files a measurement times: a Program as it is deployed (eval mode, at the measured batch), exported
the way ONNX Runtime runs it (a fake-quantized Program in its integer lowering), and a cache of those files by a
fingerprint of the Program, so that a search exports its dense model once (runtime/measure/speedup.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.fingerprint import file_sha256, fingerprint
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.graph.rebatch import rebatch
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.onnx.export import export_onnx
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET
from prunefx.runtime.onnx.quantized import export_quantized_onnx, onnxruntime_lowering

# The weights from which a search's readings time the delivered (dynamo) files, not TorchScript ones: TorchScript's
# export copies every weight several times, and from a ViT-B/16's 346 MB on it is no faster (2 cores: 4.8 s against
# 5.1 s; a ViT-L/16, 26 s against 17 s), so one file serves the reading and the confirmation (benchmarks/tool_speed.py).
DELIVERED_FROM_BYTES = 256 << 20


class ExportCache:
    """ONNX files of the Programs measured so far, by a fingerprint of their graph and every tensor the graph
    reads: a search measures the same dense model against every candidate, and a dynamo export of it costs
    seconds to tens of seconds on a loaded 2-core machine. The `keep` files used last stay (the dense model's
    among them, used by every measurement), the others are deleted: a merge pass or a search meets a new
    candidate at every step, and every file of a large model kept would fill the disk."""

    def __init__(self, batch: int, exporter: str = "dynamo", export: Callable | None = None,
                 quantized: ExportCache | None = None, keep: int = 4, check: Callable[[Program], None] | None = None,
                 opset: int = DEFAULT_OPSET, delivered: ExportCache | None = None):
        # export(program, path, batch, exporter) -> (path, inputs): `exported_file` (ONNX Runtime's files) by default;
        # `quantized`: another cache that holds the fake-quantized Programs' files (they do not depend on the exporter);
        # `delivered`: the cache of the delivered files, which holds those of Programs with DELIVERED_FROM_BYTES of weights
        self.batch, self.exporter, self.export, self.quantized = batch, exporter, export, quantized
        self.delivered = delivered
        self.opset = opset  # the delivered file's: what is timed is what is written
        self.check = check  # what a Program must be to be measured here, checked before it is exported
        self._folder: tempfile.TemporaryDirectory | None = None  # made at the first export
        # the least recently used file goes (exported again if met again)
        self.files = LastUsed(keep, released=lambda entry: _remove_with_side_file(entry[0]))

    def close(self) -> None:
        """Remove every file now; a later `get` exports again."""
        self.files.entries.clear()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def get(self, program: Program) -> tuple[Path, tuple, str]:
        """(ONNX path, example inputs at `batch`, sha256 of the file) for `program`."""
        if self.check is not None:
            self.check(program)
        if has_fake_quant(program.graph):  # the INT8 lowering's file, whichever cache holds it
            if self.quantized is not None:
                return self.quantized.get(program)
        elif self.delivered is not None and weight_bytes(program) >= DELIVERED_FROM_BYTES:
            return self.delivered.get(program)
        return self.files.get(fingerprint(program), lambda: self._exported(program))

    def _exported(self, program: Program) -> tuple[Path, tuple, str]:
        name = f"{self.files.made}.onnx"  # a name of its own: an evicted file's is never reused
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="prunefx-measure-")
        path, inputs = (self.export or exported_file)(program, Path(self._folder.name) / name, self.batch, self.exporter,
                                                       opset=self.opset)
        return path, inputs, file_sha256(path)  # read in chunks: a ViT-L's file is 1.2 GB


def weight_bytes(program: Program) -> int:
    """The bytes of `program`'s parameters and buffers, each tensor counted once."""
    tensors = {id(tensor): tensor for tensor in (*program.module.parameters(), *program.module.buffers())}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def _remove_with_side_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(f"{path.name}.data").unlink(missing_ok=True)  # a model over 2 GB keeps its weights beside it


def exported_file(program: Program, path: Path, batch: int, exporter: str = "dynamo", *, activations: str | None = None,
                  opset: int = DEFAULT_OPSET):
    """The ONNX file ONNX Runtime runs for `program`: a fake-quantized Program (passes/quantize_int8) in the
    integer lowering for this CPU (runtime/onnx/quantized.py), so an INT8 candidate is timed as deployed;
    `activations` names another lowering ("s8": TensorRT's symmetric Q/DQ form)."""
    program = deployed(program, batch)
    if has_fake_quant(program.graph):
        lowering = activations or onnxruntime_lowering()
        return export_quantized_onnx(program, path, activations=lowering, opset=opset).path, program.example_inputs
    return export_onnx(program, path, exporter=exporter, opset=opset).path, program.example_inputs


def deployed(program: Program, batch: int) -> Program:
    """`program` as it is deployed: in eval mode, cut to `batch` (a copy where either changes)."""
    program = program.clone().eval() if program.training else program
    return rebatch(program, batch) if int(program.example_inputs[0].shape[0]) != batch else program

