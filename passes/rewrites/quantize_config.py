"""quantize_int8's configuration (the pass: passes/quantize_int8.py): how activation ranges are read, which
layers stay in float, and what is quantized beside the layers. Torch-free: `prunefx quantize` makes its flags
of these fields without importing the pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from prunefx.graph.int8.range_methods import METHODS
from prunefx.passes.core.pass_config import PassConfig, option

OWNER = "quantize_int8"


@dataclass
class QuantizeInt8Config(PassConfig):
    owner: ClassVar[str] = OWNER

    calibration: Any = option(source="calibration", help="input batches the activation ranges are read from")
    method: str = option("mse", help="how an activation's range is read from its statistics", choices=METHODS)
    percentile: float = option(99.99, low=50.0, high=100.0, help="the percentile of |x| taken as the range")
    max_batches: int | None = option(low=1, help="read at most this many calibration batches")
    skip_nodes: list[str] = option([], help="layer names kept in float", describe="a list of node names")
    skip_operators: list[str] = option([], help="operators kept in float (conv2d, linear, matmul, add, ...)")
    sensitive: int = option(0, low=0, help="leave the k layers with the largest quantization error in float")
    sensitivity_batches: int = option(4, low=1, help="batches the per-layer errors are measured on",
                                      cli=False)
    fold_batchnorm: bool = option(True, help="fold batch norms into the layers before them first, as TensorRT "
                                             "would")
    attention: bool = option(True, help="INT8 attention: spell scaled_dot_product_attention out (matmul, softmax, "
                                        "matmul) and quantize Q, K, V and the softmax output")
