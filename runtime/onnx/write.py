"""Write an ONNX model to one file with its initializers serialised one at a time: the very bytes that
onnx.save_model writes, without the whole model ever held as one serialised copy.

protobuf's encoder builds the message in a buffer that grows by doubling and then hands back a copy of it:
about two to three times the model in memory besides the model itself, for a model whose weights make up
nearly all of its size. Here each initializer is framed by protobuf itself (a GraphProto holding only that
initializer serialises to exactly that field's bytes), and only the enclosing `graph` field's key and length
are written by hand. Fields go in field-number order, protobuf's own order, so the file is byte for byte
what SerializeToString gives (tests/test_memory_copies.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import onnx
from google.protobuf.message import Message

_LENGTH_DELIMITED = 2  # protobuf's wire type of embedded messages


def save_model_streamed(model: onnx.ModelProto, path: Path, apart: dict[str, np.ndarray] | None = None) -> int:
    """Write `model` to `path` as onnx.save_model would (inline weights, no external data); the bytes written.
    `apart`: arrays for the initializers of those names that the model holds as external references only
    (runtime/onnx/export.py's weights kept apart): their data is written straight from the arrays, as the
    raw_data that the tensor would serialise with, and never copied into a TensorProto."""
    apart = apart or {}
    model_head, model_tail = _split(model, "graph")
    graph_head, graph_tail = _split(model.graph, "initializer")
    sizes = [_initializer_size(tensor, apart) for tensor in model.graph.initializer]
    graph_size = len(graph_head) + sum(sizes) + len(graph_tail)
    graph_number = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    frame = _varint(graph_number << 3 | _LENGTH_DELIMITED) + _varint(graph_size)
    with open(path, "wb") as file:
        for piece in (model_head, frame, graph_head):
            file.write(piece)
        _write_initializers(model.graph, file, apart)
        file.write(graph_tail)
        file.write(model_tail)
    return len(model_head) + len(frame) + graph_size + len(model_tail)


def is_apart(tensor: onnx.TensorProto, apart: dict[str, np.ndarray]) -> bool:
    return tensor.name in apart and tensor.data_location == onnx.TensorProto.EXTERNAL


def little_endian_bytes(array: np.ndarray) -> memoryview:
    """The array's elements as ONNX's raw_data holds them (little-endian, row-major), a view where it can be."""
    ordered = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return memoryview(ordered.reshape(-1).view(np.uint8))


_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _apart_frame(tensor: onnx.TensorProto, nbytes: int) -> tuple[bytes, bytes, bytes]:
    """A tensor held apart, serialised around its data: the initializer field's key and length with the
    tensor's fields before raw_data, raw_data's key and length, and its fields after raw_data (the external
    reference left out). Its `nbytes` of data go between the second and the third."""
    bare = onnx.TensorProto()
    bare.CopyFrom(tensor)
    bare.ClearField("external_data")
    bare.ClearField("data_location")
    head, tail = _split(bare, "raw_data")
    key = _varint(_RAW_DATA << 3 | _LENGTH_DELIMITED) + _varint(nbytes)
    inner = len(head) + len(key) + nbytes + len(tail)
    return _varint(_INITIALIZER << 3 | _LENGTH_DELIMITED) + _varint(inner) + head, key, tail


def _initializer_size(tensor: onnx.TensorProto, apart: dict[str, np.ndarray]) -> int:
    if is_apart(tensor, apart):
        nbytes = apart[tensor.name].nbytes  # from the shape: the data is not laid out to be counted
        return sum(len(piece) for piece in _apart_frame(tensor, nbytes)) + nbytes
    return onnx.GraphProto(initializer=[tensor]).ByteSize()


def _write_initializers(graph: onnx.GraphProto, file: IO[bytes], apart: dict[str, np.ndarray]) -> None:
    for tensor in graph.initializer:  # one at a time: the largest weight is the most held at once
        if is_apart(tensor, apart):
            data = little_endian_bytes(apart[tensor.name])
            head, key, tail = _apart_frame(tensor, data.nbytes)
            for piece in (head, key, data, tail):
                file.write(piece)
        else:
            file.write(onnx.GraphProto(initializer=[tensor]).SerializeToString())


def _split(message: Message, name: str) -> tuple[bytes, bytes]:
    """The serialised fields of `message` numbered below, and above, the field `name` (left out)."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    before, after = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.number == number:
            continue
        target = before if field.number < number else after
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return before.SerializeToString(), after.SerializeToString()


def _varint(value: int) -> bytes:
    """protobuf's base-128 varint: seven bits a byte, low bits first, the high bit set on all but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
