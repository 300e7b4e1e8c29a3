"""ONNX Runtime's reason for refusing a file reaches the user (bench's load error, check's finding), not the C++ source
line and signature that lead its message; and only a file whose protobuf does not parse is called corrupt."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from prunefx.runtime.check.readiness import check_model
from prunefx.runtime.errors import OnnxSessionError
from prunefx.runtime.ort.refusals import refusal_reason
from prunefx.runtime.ort.session import OnnxRuntimeSession

FUTURE_IR = 99  # an IR version no ONNX Runtime reads


def _relu(ir_version: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)


def _own_words(model: onnx.ModelProto) -> str:
    """The oracle: the sentence ONNX Runtime ends its refusal with (after the source line and signature)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - its Fail type is not importable by a stable name
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    message = str(caught.value).strip()
    assert ".cc:" in message  # the form this module exists for
    return message[message.index(") Unsupported") + 2:]


def test_a_load_refusal_names_the_reason_and_not_a_corrupt_file(tmp_path):
    path = tmp_path / "future.onnx"
    onnx.save(_relu(FUTURE_IR), path)
    reason = _own_words(_relu(FUTURE_IR))
    with pytest.raises(OnnxSessionError) as caught:
        OnnxRuntimeSession(path)
    message = str(caught.value)
    assert reason in message and f"IR version: {FUTURE_IR}" in message
    assert "corrupt" not in message and ".cc:" not in message and "\n" not in message


def test_checks_finding_carries_the_reason_alone():
    readiness = check_model(_relu(FUTURE_IR), "ort", load=True)
    [refused] = [finding for finding in readiness.findings if finding.rule == "onnxruntime-refuses"]
    assert _own_words(_relu(FUTURE_IR)) in refused.message and "onnxruntime::" not in refused.message


def test_a_file_that_is_not_a_protobuf_is_still_called_corrupt(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07 not a protobuf \xff\xfe")
    with pytest.raises(OnnxSessionError, match="corrupt or not an ONNX file"):
        OnnxRuntimeSession(path)


@pytest.mark.parametrize(("message", "reason"), [
    ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/src/core/graph/model.cc:256 "
     "onnxruntime::Model::Model(onnx::ModelProto&&, const Logger&) const Unsupported model IR version: 14",
     "Unsupported model IR version: 14"),
    ("[ONNXRuntimeError] : 1 : FAIL : Deserialize tensor W failed.tensorprotoutils.cc:633 GetExternalDataInfo "
     "TensorProto: W external data size mismatch.",
     "Deserialize tensor W failed. GetExternalDataInfo TensorProto: W external data size mismatch."),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Mul node. Status Message: "
     "/src/math/element_wise_ops.h:563 void onnxruntime::BroadcastIterator::Init(ptrdiff_t, ptrdiff_t) axis == 1 "
     "was false. 2 by 4\n",
     "Non-zero status code returned while running Mul node. Status Message: axis == 1 was false. 2 by 4"),
    ("a message (with parentheses) of another form", "a message (with parentheses) of another form"),
])
def test_the_reason_is_cut_from_the_message(message, reason):
    assert refusal_reason(RuntimeError(message)) == reason
