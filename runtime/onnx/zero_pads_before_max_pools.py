"""A zero Pad read only by MaxPools, rewritten so that ONNX Runtime's Pad fusion cannot change what it computes.

ONNX Runtime's PadFusion folds a constant Pad into the MaxPool after it, as the pool's own pads; but a MaxPool pads
with -inf, not 0, so wherever a window's values are all negative the zeros no longer win the max (BiT's stem: a
convolution, ConstantPad2d(1, 0), MaxPool2d(3, 2), on signed values: 2e-3 off). The Pad is kept with -inf, which
the fusion folds correctly, and the zeros come back by a Max with a mask of the padded shape: -inf inside, 0 on the
border, built from the input's shape (Expand, then the same Pad with zeros), which runtimes fold to a constant
where shapes are static. Exact: a max of the same numbers, on any runtime.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def guard_zero_pads_before_max_pools(graph: gs.Graph) -> int:
    """Rewrite every such Pad of `graph` (in place); how many were rewritten."""
    rewritten = 0
    for pad in [node for node in graph.nodes if node.op == "Pad" and _zero_pad_before_max_pools(node)]:
        source, pads, padded = pad.inputs[0], pad.inputs[1], pad.outputs[0]
        dtype = np.dtype(source.dtype or padded.dtype or np.float32)
        minus_infinity = gs.Constant(f"{pad.name}_minus_infinity", np.array(-np.inf, dtype=dtype))
        shape = graph.layer(op="Shape", name=f"{pad.name}_shape", inputs=[source],
                            outputs=[gs.Variable(f"{pad.name}_shape", dtype=np.int64)])[0]
        filled = graph.layer(op="Expand", name=f"{pad.name}_filled", inputs=[minus_infinity, shape],
                             outputs=[gs.Variable(f"{pad.name}_filled", dtype=dtype)])[0]
        mask = graph.layer(op="Pad", name=f"{pad.name}_zero_border", inputs=[filled, pads],
                           outputs=[gs.Variable(f"{pad.name}_zero_border", dtype=dtype)], attrs={"mode": "constant"})[0]
        unguarded = gs.Variable(f"{padded.name}_minus_infinity_border", dtype=padded.dtype, shape=padded.shape)
        pad.inputs = [source, pads, minus_infinity]
        pad.outputs = [unguarded]
        graph.layer(op="Max", name=f"{pad.name}_with_zero_border", inputs=[unguarded, mask], outputs=[padded])
        rewritten += 1
    return rewritten


def _zero_pad_before_max_pools(pad: gs.Node) -> bool:
    """A constant Pad of zeros (its value given as 0 or left out), whose only readers are MaxPools."""
    if pad.attrs.get("mode", "constant") != "constant" or len(pad.inputs) > 3:  # an `axes` input: left as it is
        return False
    readers = pad.outputs[0].outputs
    if not readers or any(reader.op != "MaxPool" for reader in readers):
        return False
    value = pad.inputs[2] if len(pad.inputs) == 3 else None
    if value is None or (not isinstance(value, gs.Constant) and not value.name):  # left out: zeros
        return True
    return isinstance(value, gs.Constant) and not np.any(value.values)
