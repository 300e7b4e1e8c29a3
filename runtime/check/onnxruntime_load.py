"""`prunefx check --target ort`'s last question, asked of ONNX Runtime itself: does the installed version load the
file on its CPU provider? The rules read operators and domains; a load also finds what only ONNX Runtime knows:
a type an operator has no kernel for (a float64 Conv), an operator its own domains (com.microsoft, ai.onnx.ml) do
not define, inputs of mismatched types, an IR version it cannot read. Graph optimisations are off: the question is
whether it loads, not how fast.
"""

from __future__ import annotations

import onnx

from prunefx.graph.errors import printable
from prunefx.runtime.check.findings import Finding
from prunefx.runtime.ort.refusals import refusal_reason

RULE = "onnxruntime-refuses"
# protobuf serialises at most 2 GiB: a larger model (weights inlined) is not loaded here
MAX_LOADED_BYTES = (2 << 30) - 1


def load_findings(model: onnx.ModelProto) -> list[Finding]:
    """An error finding with ONNX Runtime's reason when its CPU provider refuses `model`, a note when the model is
    too large to hand it here, else nothing."""
    import onnxruntime  # imported here: only `--target ort` asks

    if model.ByteSize() > MAX_LOADED_BYTES:
        return [Finding("info", RULE, "-", "model", "not loaded in ONNX Runtime: over 2 GiB with its weights inlined")]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the refusal is reported as a finding, not printed
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own Fail/InvalidGraph/NotImplemented types
        reason = printable(refusal_reason(error))
        return [Finding("error", RULE, "-", "model",
                        f"ONNX Runtime {onnxruntime.__version__} does not load the file on its CPU provider: {reason}")]
    del session  # its copy of the weights
    return []
