"""The shapes a TensorRT engine is built and run at, for an ONNX file whose inputs have dynamic dimensions.

TensorRT builds such a file only with an optimization profile, and trtexec without `--shapes` silently sets every
dynamic dimension to 1: an engine timed at batch 1 where the user asked for 32. Both backends therefore build at
exactly the shapes of the inputs they time (min = opt = max), named per input; a file of fixed shapes needs none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

InputShapes = tuple[tuple[str, tuple[int, ...]], ...]  # (input name, shape) of each dynamic input, in file order


def dynamic_input_shapes(onnx_path: str | os.PathLike, inputs: Sequence[torch.Tensor]) -> InputShapes:
    """(name, shape of the matching tensor of `inputs`) for each input of the file with a dimension that is not a
    fixed number; `inputs` are in the file's input order, as ONNX Runtime lists them."""
    import onnx  # runtime/ is the layer that may import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    arguments = [value for value in graph.input if value.name not in weights]
    return tuple((value.name, tuple(int(size) for size in tensor.shape))
                 for value, tensor in zip(arguments, inputs, strict=True) if not _fixed(value))


def _fixed(value) -> bool:
    dims = value.type.tensor_type.shape.dim
    return value.type.tensor_type.HasField("shape") and all(dim.HasField("dim_value") for dim in dims)


def trtexec_shapes(shapes: InputShapes) -> str:
    """trtexec's `--shapes` value: each name in single quotes (trtexec's escape for a name holding ':' or ',')."""
    return ",".join(f"'{name}':{'x'.join(map(str, shape))}" for name, shape in shapes)
