"""The targets `prunefx check` knows, as data: which ONNX operators each one's parser refuses, the opsets it
reads, and the channel multiples its tensor-core kernels want. Every entry names where it comes from.

TensorRT's operator support is the ONNX parser's own support matrix, onnx/onnx-tensorrt docs/operators.md at
the 10.1 GA release (commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, June 2024: "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20"); the operators it marks "N" are listed below.
JetPack 6's TensorRT 10.3 ships a parser of the same 10.x line; later 10.x parsers read opsets up to 24, so an
opset past 20 is a warning there, not an error. `trt11` takes the 10.x line's matrix as of 10.15 (ONNX_TENSORRT_11).
ONNX Runtime's CPU provider implements every operator of the default ONNX domain up to its opset, so `ort`
refuses only operators of domains it has no kernels for, and opsets newer than the installed ONNX Runtime
loads (asked of it: runtime/check/onnxruntime_opsets.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from prunefx.runtime.check import onnxruntime_opsets
from prunefx.runtime.check.descriptions import DESCRIPTIONS
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple

ONNX_TENSORRT_10 = ("onnx/onnx-tensorrt docs/operators.md, 10.1 GA release (commit 96e7811), operators marked "
                    "unsupported; opsets 9-20")

# Operators the TensorRT 10.x ONNX parser marks unsupported ("N"), from ONNX_TENSORRT_10.
TENSORRT_10_UNSUPPORTED = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BlackmanWindow",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
    "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement",
    "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})

ONNX_TENSORRT_11 = ("TensorRT 11.x: the parser's matrix of the 10.x line as of 10.15 (onnx/onnx-tensorrt "
                    "docs/operators.md; its Changelog.md adds the window operators in 10.4, STFT in 10.5 and FP4 "
                    "in 10.8); opsets up to 25 (NVIDIA's ONNX opset guide: 'TensorRT 11.x ... Maximum opset 25')")
TENSORRT_11_UNSUPPORTED = TENSORRT_10_UNSUPPORTED - {"BlackmanWindow", "HammingWindow", "HannWindow", "STFT"}
# The element types TensorRT's DequantizeLinear reads (operators.md: INT8, FP8, INT4; FP4 from 10.8).
TENSORRT_10_QUANTIZED = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4})
TENSORRT_11_QUANTIZED = TENSORRT_10_QUANTIZED | {onnx.TensorProto.FLOAT4E2M1}

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# Nodes of TensorRT's own domain that its parser imports (what NVIDIA Model Optimizer writes for INT4 and FP8).
TENSORRT_OWN_OPERATORS = frozenset({("trt", "TRT_INT4DequantizeLinear"), ("trt", "TRT_FP8QuantizeLinear"),
                                    ("trt", "TRT_FP8DequantizeLinear")})
# ONNX Runtime's contrib operators (its own fused kernels, what its optimiser writes): runnable there only.
ONNXRUNTIME_DOMAINS = DEFAULT_DOMAINS | {"com.microsoft", "ai.onnx.ml"}

# Channel multiples. TensorRT's performance guide: tensor-core kernels want channel counts that are multiples
# of 8 in FP16 and 32 in INT8 (others are padded); ONNX Runtime's blocked convolution kernels want one SIMD
# register of float32 channels, 16 with AVX-512 and 8 without, read from this machine's CPU as the budgets'
# widths are (docs/latency-budgets.md, 'The rounding multiple comes from the backend').
TENSOR_CORE_MULTIPLES = {"int8": 32, "float": 8}
ONNXRUNTIME_MULTIPLES = dict.fromkeys(("int8", "float"), onnxruntime_multiple())


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tensorrt: bool                   # Q/DQ in TensorRT's explicit form, 2:4 sparse kernels, static shapes
    unsupported: frozenset[str]      # operators of the default domain its parser refuses
    domains: frozenset[str]          # operator domains it runs
    opsets: tuple[int, int] | None   # the default-domain opsets it reads (None: the installed ONNX Runtime's)
    multiples: dict
    source: str
    quantized_types: frozenset[int] = TENSORRT_10_QUANTIZED  # what its DequantizeLinear reads

    def opset_bounds(self) -> tuple[int, int, str] | None:
        """(oldest, newest, who reads them) of the default-domain opsets it reads; None when unknown."""
        if self.opsets:
            return (*self.opsets, f"{self.name}'s parser reads")
        newest = onnxruntime_opsets.newest_opset()
        if newest is None:
            return None
        reader = f"the installed ONNX Runtime {onnxruntime_opsets.version()} loads"
        return onnxruntime_opsets.OLDEST_OPSET, newest, reader


def _tensorrt(name: str) -> Target:
    return Target(name=name, description=DESCRIPTIONS[name], tensorrt=True, unsupported=TENSORRT_10_UNSUPPORTED,
                  domains=DEFAULT_DOMAINS, opsets=(9, 20), multiples=TENSOR_CORE_MULTIPLES, source=ONNX_TENSORRT_10)


TARGETS = {
    "trt10": _tensorrt("trt10"),
    "trt11": Target(name="trt11", description=DESCRIPTIONS["trt11"], tensorrt=True,
                    unsupported=TENSORRT_11_UNSUPPORTED, domains=DEFAULT_DOMAINS, opsets=(9, 25),
                    multiples=TENSOR_CORE_MULTIPLES, source=ONNX_TENSORRT_11, quantized_types=TENSORRT_11_QUANTIZED),
    "orin": _tensorrt("orin"),
    "ort": Target(name="ort", description=DESCRIPTIONS["ort"], tensorrt=False,
                  unsupported=frozenset(), domains=ONNXRUNTIME_DOMAINS, opsets=None, multiples=ONNXRUNTIME_MULTIPLES,
                  source="ONNX Runtime's CPU provider: every default-domain operator, plus com.microsoft; "
                         "opsets up to the newest the installed ONNX Runtime loads"),
}
