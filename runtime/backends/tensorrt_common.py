"""What the TensorRT backends (trt, torch-trt, trtexec) share: their precisions, the refusal that explains
where INT8 comes from, the tensor-core width multiples, and the ONNX files they time."""

from __future__ import annotations

import functools

from prunefx.runtime.backends.base import Backend
from prunefx.runtime.backends.facts import TensorRTFamilyFacts
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.measured_files import ExportCache, exported_file
from prunefx.runtime.measure.width_multiple import TENSOR_CORE_MULTIPLE
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET
from prunefx.runtime.tensorrt.plan import QDQ_FP16_STRONG, tensorrt_major


class TensorRTFamily(TensorRTFamilyFacts, Backend):
    gpu_timed = True
    int8_lowering = "s8"  # TensorRT's symmetric Q/DQ form

    def precision_refusal(self, precision, allowed):
        return (f"the {self.name} backend measures at {' or '.join(allowed)}, not {precision!r} (INT8 comes from "
                "the model's own quantizers: quantize it first)")

    def int8_refusal_at(self, settings) -> str | None:
        """An INT8 candidate's other layers run at the budget's precision, as the dense model's do, except at fp16
        on TensorRT 11 (runtime/tensorrt/plan.network_plan)."""
        if self.int8_refusal:  # Torch-TensorRT's: no INT8 kernels at all
            return self.int8_refusal
        precision = settings.precision or self.default_precision
        if precision == "fp16" and tensorrt_major(self.software_version(settings)) >= 11:
            return QDQ_FP16_STRONG
        return None

    def software_version(self, settings) -> str:
        """The TensorRT version that builds the engines."""
        raise NotImplementedError

    def width_multiple(self, precision: str) -> int:
        if precision not in TENSOR_CORE_MULTIPLE:
            raise MeasurementError(f"no width multiple known for backend {self.name!r} at precision {precision!r}")
        return TENSOR_CORE_MULTIPLE[precision]


def onnx_files(batch: int, opset: int = DEFAULT_OPSET) -> ExportCache:
    """The files a TensorRT pair builds from, at `batch`: a fake-quantized Program in TensorRT's symmetric
    S8 Q/DQ form. One set serves the search and the confirmation: both time what is delivered."""
    return ExportCache(batch, "dynamo", export=functools.partial(exported_file, activations=TensorRTFamily.int8_lowering),
                       opset=opset)
