"""The ONNX opsets prunefx writes, apart from the exporter (whose imports take half a second): the command line
checks --opset against them before it imports anything that exports, and makes its flag without torch."""

from __future__ import annotations

import functools

# 20: the first opset with a Gelu operator. Below it GELU is five operators that ONNX Runtime's CPU provider runs
# unfused (docs/backends.md). TensorRT 10's parser reads opsets 9 to 20; ONNX Runtime loads 20 from 1.17 on, and
# --opset 18 writes a file for older ones.
DEFAULT_OPSET = 20
# The dynamo exporter writes opset 18 and later, up to what torch's ONNX converters know; outside that
# range the converters fill stderr with warnings and write a file that may not load. Refused instead.
MIN_OPSET = 18


@functools.cache
def max_opset() -> int:
    """The newest opset torch's ONNX converters know (torch imported on the first call)."""
    import torch.onnx._constants

    return int(getattr(torch.onnx._constants, "ONNX_MAX_OPSET", 23))
