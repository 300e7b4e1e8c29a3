"""The ONNX opsets prunefx writes, apart from the exporter (whose imports take half a second): the command line
checks --opset against them before it imports anything that exports."""

from __future__ import annotations

import torch.onnx._constants

DEFAULT_OPSET = 18
# The dynamo exporter writes opset 18 and later, up to what torch's ONNX converters know; outside that
# range the converters fill stderr with warnings and write a file that may not load. Refused instead.
MIN_OPSET = 18
MAX_OPSET = int(getattr(torch.onnx._constants, "ONNX_MAX_OPSET", 23))
