"""How a TensorRT engine is built from a prunefx ONNX file: the build options and the precision plan.

`network_plan` is a pure function of the TensorRT version, the requested precision and what the ONNX file
holds (tested without TensorRT): strongly typed on TensorRT >= 10, INT8 only from Q/DQ nodes, FP16 from an
FP16 graph or TensorRT 10's weakly typed flag. A Q/DQ file asked at fp32 or fp16 (an INT8 candidate of a
budget) runs its other layers at that precision, as the dense model does, and at int8 in FP16 where the
version can (TensorRT 8 to 10); TensorRT 11 cannot at fp16. The plan per version and `sparse`: see docs/tensorrt.md,
'How an engine is built'.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.tensorrt.input_shapes import InputShapes

PRECISIONS = ("fp32", "fp16", "int8")
QDQ_FP16_STRONG = ("TensorRT 11 builds the float layers of a Q/DQ file in the types the file gives them (FP32 "
                   "here), where the dense model is lowered to FP16: an INT8 candidate is not measured like for "
                   "like at fp16 (measure at fp32, or on TensorRT 10)")
NO_QDQ = ("INT8 comes only from QuantizeLinear/DequantizeLinear nodes in the ONNX file (TensorRT 10 deprecated and "
          "TensorRT 11 removed implicit calibration): quantize the model first (passes/quantize_int8.py, lowered by "
          "runtime/onnx/quantized.py), or give calibration data")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise MeasurementError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class BuildOptions:
    """What an engine is built with; every field is part of the cache key."""

    precision: str = "fp32"
    sparse: bool = False
    workspace_mib: int | None = None           # builder scratch memory limit (None: TensorRT's default)
    calibration_digest: str | None = None      # sha256 of the INT8 calibration batches (calibration_digest)
    input_shapes: InputShapes = ()             # the optimization profile of a file with dynamic inputs

    def __post_init__(self):
        check_precision(self.precision)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OnnxTypes:
    """What decides the precision of a strongly typed engine: Q/DQ nodes and float16 tensors in the file."""

    has_qdq: bool
    float16: bool


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def onnx_types(onnx_path: str | os.PathLike) -> OnnxTypes:
    import onnx  # runtime/ is the layer that may import onnx; only needed here when building

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    has_qdq = any(node.op_type in QDQ_OPS for node in graph.node)
    float16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer) or any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute)
        for node in graph.node)
    return OnnxTypes(has_qdq=has_qdq, float16=float16)


def tensorrt_major(version: str) -> int:
    """'10.3.0' -> 10; a version that does not start with a number is a clear error, never a guess."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise MeasurementError(f"cannot read the TensorRT major version from {version!r}")
    return int(head)


@dataclass(frozen=True)
class NetworkPlan:
    """How to build: a strongly typed network or not, the BuilderFlag names to set, and whether the ONNX
    file must first be lowered to an FP16 graph (TensorRT >= 11 has no FP16 flag)."""

    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    lower_to_fp16: bool = False


def network_plan(tensorrt_version: str, precision: str, types: OnnxTypes, *, sparse: bool = False) -> NetworkPlan:
    """The build plan for `precision` on this TensorRT version and this file (see the module docstring)."""
    check_precision(precision)
    if precision == "int8" and not types.has_qdq:
        raise MeasurementError(NO_QDQ)
    major = tensorrt_major(tensorrt_version)
    sparsity = ("SPARSE_WEIGHTS",) if sparse else ()
    # a Q/DQ file: its Q/DQ layers in INT8, the others at the precision asked (int8: FP16 where the version can),
    # as a dense model measured beside it runs them
    int8 = ("INT8",) if types.has_qdq else ()
    if major < 10:  # no strong typing before 9.x became 10: the precision flags are all there is
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16",)}[precision]
        return NetworkPlan(strongly_typed=False, builder_flags=flags + int8 + sparsity)
    if precision in ("fp16", "int8") and not types.float16 and major == 10:
        # TensorRT 10's weakly typed FP16, deprecated since 10.12, removed in 11
        return NetworkPlan(strongly_typed=False, builder_flags=("FP16",) + int8 + sparsity)
    if precision == "fp16" and not types.float16:
        if types.has_qdq:  # the FP16 lowering keeps Q/DQ files out: their scales are typed
            raise MeasurementError(QDQ_FP16_STRONG)
        return NetworkPlan(strongly_typed=True, builder_flags=sparsity, lower_to_fp16=True)
    return NetworkPlan(strongly_typed=True, builder_flags=sparsity)


def network_creation_flags(trt, plan: NetworkPlan) -> int:
    """The bit mask for builder.create_network: STRONGLY_TYPED on TensorRT >= 10 (accepted and ignored by
    11, which is always strongly typed), EXPLICIT_BATCH before 10 (implicit batch was the default there)."""
    creation = trt.NetworkDefinitionCreationFlag
    if tensorrt_major(trt.__version__) < 10:
        return 1 << int(creation.EXPLICIT_BATCH)
    strongly = getattr(creation, "STRONGLY_TYPED", None)  # a later major may drop the ignored member
    return 1 << int(strongly) if plan.strongly_typed and strongly is not None else 0
