"""The targets `prunefx check` knows, as data: which ONNX operators each one's parser refuses, the opsets it
reads, and the channel multiples its tensor-core kernels want. Every entry names where it comes from.

TensorRT's operator support is the ONNX parser's own support matrix, onnx/onnx-tensorrt docs/operators.md at
the 10.1 GA release (commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, June 2024: "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20"); the operators it marks "N" are listed below.
JetPack 6's TensorRT 10.3 ships a parser of the same 10.x line. No 11.x matrix was available where this table
was written, so `trt11` applies the 10.x one and says so in every report (`source`): a 10.x operator dropped
in 11 would be missed, an operator added in 11 reported as unsupported.
ONNX Runtime's CPU provider implements every operator of the default ONNX domain up to its opset, so `ort`
refuses only operators of domains it has no kernels for, and opsets newer than the installed ONNX Runtime
loads (asked of it: runtime/check/onnxruntime_opsets.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunefx.runtime.check import onnxruntime_opsets

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

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# ONNX Runtime's contrib operators (its own fused kernels, what its optimiser writes): runnable there only.
ONNXRUNTIME_DOMAINS = DEFAULT_DOMAINS | {"com.microsoft", "ai.onnx.ml"}

# Channel multiples. TensorRT's performance guide: tensor-core kernels want channel counts that are multiples
# of 8 in FP16 and 32 in INT8 (others are padded); ONNX Runtime's blocked convolution kernels on AVX-512 CPUs
# want 16 (docs/latency-budgets.md, 'The rounding multiple comes from the backend').
TENSOR_CORE_MULTIPLES = {"int8": 32, "float": 8}
ONNXRUNTIME_MULTIPLES = {"int8": 16, "float": 16}


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

    def opset_bounds(self) -> tuple[int, int, str] | None:
        """(oldest, newest, who reads them) of the default-domain opsets it reads; None when unknown."""
        if self.opsets:
            return (*self.opsets, f"{self.name}'s parser reads")
        newest = onnxruntime_opsets.newest_opset()
        if newest is None:
            return None
        reader = f"the installed ONNX Runtime {onnxruntime_opsets.version()} loads"
        return onnxruntime_opsets.OLDEST_OPSET, newest, reader


def _tensorrt(name: str, description: str, source_note: str = "") -> Target:
    return Target(name=name, description=description, tensorrt=True, unsupported=TENSORRT_10_UNSUPPORTED,
                  domains=DEFAULT_DOMAINS, opsets=(9, 20), multiples=TENSOR_CORE_MULTIPLES,
                  source=ONNX_TENSORRT_10 + source_note)


TARGETS = {
    "trt10": _tensorrt("trt10", "TensorRT 10.x (x86-64 GPUs; JetPack 6 ships 10.3)"),
    "trt11": _tensorrt("trt11", "TensorRT 11.x (always strongly typed)",
                       "; no 11.x matrix was available: the 10.x one is applied"),
    "orin": _tensorrt("orin", "Jetson Orin, JetPack 6: TensorRT 10.3 on an Ampere GPU with sparse tensor cores"),
    "ort": Target(name="ort", description="ONNX Runtime, CPU execution provider", tensorrt=False,
                  unsupported=frozenset(), domains=ONNXRUNTIME_DOMAINS, opsets=None, multiples=ONNXRUNTIME_MULTIPLES,
                  source="ONNX Runtime's CPU provider: every default-domain operator, plus com.microsoft; "
                         "opsets up to the newest the installed ONNX Runtime loads"),
}
