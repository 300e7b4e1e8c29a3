"""The model files every compressing command delivers, written one way: model.pt2 (the Program), model.onnx
(exported and cleaned, runtime/onnx/export.py; a Program with INT8 fake quantizers is lowered for ONNX Runtime
on this CPU by runtime/onnx/quantized.py instead), its torch-vs-ONNX-Runtime parity, and `prunefx check`'s
findings on model.onnx (`readiness`, runtime/check/readiness.py), for report.json
(prunefx/reports/report_json.py). `prune`, `depth`, `compress` and `demo` call this inside their staged output
folder (prunefx/output.py), so a failure anywhere leaves no partial output."""

from __future__ import annotations

from pathlib import Path

from prunefx.graph import Program
from prunefx.graph.heap import release_freed_memory
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.runtime import check_parity, export_onnx, export_quantized_onnx, onnxruntime_lowering
from prunefx.runtime.check.readiness import report_entries
from prunefx.runtime.onnx.parity import warn_if_constant, warn_if_inexact


def write_model(staging: Path, program: Program, *, opset: int) -> dict:
    """model.pt2 and model.onnx in `staging`; the report's `onnx` and `parity` entries."""
    program.save(staging / "model.pt2")
    release_freed_memory()  # what saving held, before the export's own copy of the weights (graph/heap.py)
    path, onnx_entry = export_deliverable(program, staging / "model.onnx", opset=opset)
    parity = check_parity(program, path)
    quantized = has_fake_quant(program.graph)
    if not quantized:  # an INT8 file's rounding is its own: no float tolerance reads it
        warn_if_inexact(parity, "model.onnx")
    warn_if_constant(parity, "model.onnx")
    # INT8 here is ONNX Runtime's lowering; a float file is what TensorRT engines are built from too
    targets = ("ort",) if quantized else ("trt11", "ort")
    return {"onnx": onnx_entry, "readiness": report_entries(path, targets),
            "parity": parity.entry()}


def export_deliverable(program: Program, path: Path, *, opset: int) -> tuple[Path, dict]:
    """`program` as model.onnx is written, and the report's `onnx` entry; also the file a baseline it is timed
    against is exported to, so that a quantized dense model is timed in its INT8 lowering, not as float
    weights behind Q/DQ pairs."""
    if has_fake_quant(program.graph):  # INT8: Q/DQ with INT8 weights, lowered for ONNX Runtime's kernels
        lowering = onnxruntime_lowering()
        path = export_quantized_onnx(program, path, activations=lowering, opset=opset).path
        return path, {"exporter": "dynamo", "int8_lowering": lowering}
    exported = export_onnx(program, path, opset=opset)
    return exported.path, {"exporter": exported.exporter, "fallback_reason": exported.fallback_reason,
                           "nodes": exported.node_count}
