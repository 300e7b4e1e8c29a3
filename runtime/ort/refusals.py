"""ONNX Runtime's reason for refusing a file, in the words a user can act on.

Its errors lead with a status code, the file's path and the C++ source line and signature that raised
(`[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/.../model.cc:256
onnxruntime::Model::Model(onnx::ModelProto&&, ...) Unsupported model IR version: 14, ...`): cut to one line,
the reason itself was lost. Only a protobuf that does not parse is a file that is not ONNX at all.
"""

from __future__ import annotations

import re

_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ([A-Z_]+) : ")
_LOAD = re.compile(r"^Load model from .*? failed:")
_SOURCE_LINE = re.compile(r"(?:/[\w.+-]+)*/?\b[\w+-]+\.(?:cc|cpp|h):\d+ ")
_QUALIFIED_CALL = re.compile(r"^(?:[\w:<>*&]+ )*\w+(?:::[\w~<>]+)+\(")  # [return type] namespace::name(
REASON_CHARACTERS = 300


def refusal_reason(error: BaseException) -> str:
    """ONNX Runtime's own reason in `error`, without its status code, path, source line or C++ signature."""
    text = " ".join(str(error).split())
    text = _STATUS.sub("", text)
    text = _LOAD.sub("", text).strip()
    found = _SOURCE_LINE.search(text)
    if found is not None:
        text = f"{text[:found.start()]} {_after_signature(text[found.end():])}"
    return " ".join(text.split())[:REASON_CHARACTERS] or type(error).__name__


def is_unreadable_protobuf(error: BaseException) -> bool:
    """Whether ONNX Runtime found no ONNX model in the file at all (its protobuf does not parse)."""
    status = _STATUS.match(" ".join(str(error).split()))
    return type(error).__name__ == "InvalidProtobuf" or (status is not None and status.group(1) == "INVALID_PROTOBUF")


def _after_signature(text: str) -> str:
    """`text` past the C++ function signature it may start with (`void ns::f(args...) const `), parentheses balanced;
    a bare function name (`GetExternalDataInfo TensorProto: ...`) is left: it reads as part of the sentence."""
    if _QUALIFIED_CALL.match(text) is None:
        return text
    depth = 0
    for index, character in enumerate(text):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if character == ")" and depth == 0:
            rest = text[index + 1:].lstrip()
            return rest[len("const"):].lstrip() if rest.startswith("const ") else rest
    return text
