"""gelu_opset: what exporting at ONNX opset 20 instead of prunefx's default 18 buys on ONNX Runtime's CPU provider.

At opset 20 the exporter writes GELU as one `Gelu` operator, which ONNX Runtime runs as one kernel; at opset 18 it
writes five (Div, Erf, Add, Mul, Mul), which ONNX Runtime's CPU provider leaves unfused. Per model (224x224, batch
1, the weights of benchmarks/int8_latency.py's `build`): the FP32 file and prunefx's INT8 file (quantize_int8, mse,
lowered for this CPU, calibrated as int8_latency calibrates), each exported at both opsets; each opset-20 file timed
against its opset-18 twin round by round (common.side_by_side: the runtime's statistic, the ratio of medians with
its 90 % interval over the rounds). ResNet-50 has no GELU: its two files should time alike (the control). Also
recorded: the operators each file holds, and the largest difference between the twins' outputs on one image.

Writes benchmarks/results/gelu_opset.json and .md.

    .venv/bin/python benchmarks/gelu_opset.py [--models vit_s16 convnext_tiny resnet50] [--rounds 6] [--runs 120]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from common import (
    RESULTS,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    publish_results,
    side_by_side,
)
from int8_latency import build, calibration

from prunefx.assets import load_imagenet_batch
from prunefx.graph import capture
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import OnnxRuntimeSession, export_onnx
from prunefx.runtime.onnx.quantized import export_quantized_onnx, onnxruntime_lowering
from prunefx.runtime.ort.runners import onnx_runner

NAME = "gelu_opset"
OPSETS = (18, 20)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_s16", "convnext_tiny", "resnet50"])
    parser.add_argument("--rounds", type=int, default=6, help="rounds, every pair timed in each (6)")
    parser.add_argument("--runs", type=int, default=120, help="timed runs a side over all rounds (120)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (2)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    return parser.parse_args(argv)


def twin_files(name: str, images: torch.Tensor, folder: Path) -> dict[str, dict[int, Path]]:
    """{"fp32": {18: path, 20: path}, "int8": {...}}: one captured model, one fake-quantized copy, each exported at
    both opsets."""
    dense = capture(build(name), torch.randn(1, 3, 224, 224), name=name).eval()
    quantized = dense.clone().eval()
    quantize_int8(quantized, config={"calibration": calibration(images), "method": "mse"})
    return {"fp32": {opset: export_onnx(dense, folder / f"fp32_{opset}.onnx", opset=opset).path for opset in OPSETS},
            "int8": {opset: export_quantized_onnx(quantized, folder / f"int8_{opset}.onnx",
                                                  activations=onnxruntime_lowering(), opset=opset).path
                     for opset in OPSETS}}


def operators(path: Path) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in onnx.load(path).graph.node).most_common())


def largest_difference(paths: dict[int, Path], x: np.ndarray) -> float:
    outputs = [OnnxRuntimeSession(paths[opset], threads=1).run(x)[0] for opset in OPSETS]
    return float(np.abs(outputs[0] - outputs[1]).max())


def run_model(name: str, images: torch.Tensor, args) -> dict:
    x = images[:1]
    with tempfile.TemporaryDirectory(prefix="prunefx-gelu-opset-") as tmp:
        files = twin_files(name, images, Path(tmp))
        rows = {}
        for precision, paths in files.items():
            old, new = (onnx_runner(paths[opset], (x,), threads=args.threads) for opset in OPSETS)
            timed = side_by_side(old, {"new": new}, rounds=args.rounds, runs=max(args.runs // args.rounds, 10),
                                 threads=args.threads)["new"]
            rows[precision] = {**timed, "operators": {opset: operators(paths[opset]) for opset in OPSETS},
                               "largest_difference": largest_difference(paths, x.numpy())}
    return rows


def markdown(report: dict) -> str:
    lines = ["# ONNX opset 20 against 18 on ONNX Runtime (GELU as one operator)\n",
             f"{machine_summary(report['machine'])}\n", f"Command: `{report['command']}`\n",
             f"Batch 1, 224x224, {report['threads']} threads; speed-up = the opset-18 file's median / the opset-20 "
             "file's, pooled over the rounds, with its 90 % interval.\n"]
    rows = [[model, precision, f"{row['dense_ms']:.2f}", f"{row['pruned_ms']:.2f}",
             f"**{row['speedup']:.3f}x**{interval_cell(row)}",
             sum(row["operators"][18].values()), sum(row["operators"][20].values()), row["operators"][20].get("Gelu", 0),
             f"{row['largest_difference']:.1e}"]
            for model, by_precision in report["models"].items() for precision, row in by_precision.items()]
    lines.append(markdown_table(["model", "file", "opset 18 ms", "opset 20 ms", "speed-up", "nodes at 18",
                                 "nodes at 20", "Gelu at 20", "largest output difference"], rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    images, _ = load_imagenet_batch()
    report = {"command": command_line(), "machine": machine_info(runs=args.runs, threads=args.threads),
              "threads": args.threads, "models": {name: run_model(name, images, args) for name in args.models}}
    return publish_results(NAME, report, markdown(report), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
