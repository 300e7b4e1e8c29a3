"""`prunefx profile --backend ort`: each node's time as ONNX Runtime's own profiler records it on this CPU.

The nodes are those ONNX Runtime runs after its graph optimisations: a convolution fused with its activation is one
row (named after one of the nodes it fuses, or after its output where the CPU provider rewrote it into its blocked
NCHWc layout), and the layout reorders it adds are rows of their own. Where a row keeps an ONNX node's name, it
carries that node's module scope. The rows add up to the run's operator work, less than a timed run takes: the call
into ONNX Runtime and copying the inputs in and the outputs out are not in any node.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from prunefx.runtime.onnx.provenance import OnnxNodeOrigin, onnx_node_origins
from prunefx.runtime.ort.kernel_profile import kernel_ms_by_node
from prunefx.runtime.ort.session import OnnxRuntimeSession
from prunefx.runtime.tensorrt.layer_profile import LayerProfile, LayerRow

BLOCKED = "_nchwc"  # what ONNX Runtime's NCHWc transformer adds to the name of the output it rewrites
NOTE = ("kernel times of the nodes ONNX Runtime runs after its graph optimisations (fused nodes under one name, its "
        "layout reorders as rows of their own): they leave out the call and the copies in and out of a run")


def ort_profile(path: str | os.PathLike, inputs: Sequence[np.ndarray | torch.Tensor], *, threads: int,
                spinning: bool, flush_denormals: bool, warmup: int, runs: int) -> LayerProfile:
    """The ONNX file at `path` run `warmup` + `runs` times on `inputs` with prunefx's timing settings and the
    profiler on; one row per node with its median kernel time over the `runs` timed runs."""
    with tempfile.TemporaryDirectory(prefix="prunefx-ort-profile-") as folder:
        session = OnnxRuntimeSession(path, threads=threads, spinning=spinning, flush_denormals=flush_denormals,
                                     profile_prefix=str(Path(folder) / "profile"))
        feed = session.feed(*inputs)
        for _ in range(warmup + runs):
            session.run_feed(feed)
        events = json.loads(Path(session.session.end_profiling()).read_text(encoding="utf-8"))
    medians = kernel_ms_by_node(events, skip=warmup)
    origin_of = _origins(path)
    total = sum(ms for _, ms in medians.values()) or 1.0
    rows = []
    for name, (op, ms) in medians.items():
        origin = origin_of(name)
        rows.append(LayerRow(layer=name, median_ms=ms, share=ms / total, layer_type=op, precision=_precision(op),
                             onnx_nodes=(origin.name,) if origin is not None else (),
                             scopes=(origin.scope,) if origin is not None and origin.scope else ()))
    return LayerProfile(rows=rows, runs=runs, source="onnxruntime", notes=[NOTE])


def _origins(path: str | os.PathLike) -> Callable[[str], OnnxNodeOrigin | None]:
    """The ONNX node a node ONNX Runtime ran stands for: the node of its name, else (a node rewritten into the
    blocked layout, named after its output with _nchwc added) the node that writes that output."""
    model = onnx.load(str(path), load_external_data=False)
    origins = {origin.name: origin for origin in onnx_node_origins(model)}
    writers = {output: node.name for node in model.graph.node for output in node.output}
    return lambda name: origins.get(name) or origins.get(writers.get(name.removesuffix(BLOCKED), ""))


def _precision(op: str) -> str:
    """int8 for ONNX Runtime's integer kernels (QLinearConv, QGemm, MatMulInteger, ...), else fp32."""
    return "int8" if op.startswith(("QLinear", "QGemm")) or "Integer" in op else "fp32"
