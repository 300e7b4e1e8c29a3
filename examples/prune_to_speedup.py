"""Prune a model until it measures S times faster than the dense one on ONNX Runtime, then check that
figure with an independent measurement of the two delivered ONNX files.

How-to: docs/howto/prune-torchvision.md. Run it:

    .venv/bin/python examples/prune_to_speedup.py --model torchvision:resnet18 --speedup 2 -o out/r18x2-example

Writes OUT/dense.onnx, OUT/model.onnx, OUT/model.pt2 and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import prunefx
from prunefx.models import build_model, parse_input_shape
from prunefx.passes import prune_to_budget
from prunefx.runtime import compare_latency, export_onnx, onnx_latency_pair, onnx_runner


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="torchvision:resnet18", help="any reference `prunefx inspect` takes")
    parser.add_argument("--input-shape", default="1x3x224x224", help="batch 1: the deployed shape")
    parser.add_argument("--speedup", type=float, default=2.0, help="the budget: measured speed-up over dense")
    parser.add_argument("--round-to", type=int, default=16, help="width multiple (16 suits ONNX Runtime on AVX-512)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, as deployed")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per candidate")
    parser.add_argument("-o", "--output", default="out/prune_to_speedup", help="output folder")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = build_model(args.model).module
    example = torch.randn(parse_input_shape(args.input_shape))
    dense = prunefx.capture(model, example, name=args.model)

    # The budget pass exports and times every candidate whole, side by side with the dense model.
    latency = onnx_latency_pair(threads=args.threads, runs=args.runs)
    step = (prune_to_budget, {"speedup": args.speedup, "round_to": args.round_to, "latency": latency})
    result = prunefx.Pipeline([step]).run(dense)
    budget = result.stats()["prune_to_budget"]
    for candidate in budget["trace"]:
        print(f"candidate {candidate['macs_kept']:.3f} of the MACs -> {candidate['speedup']:.2f}x")
    kept = prunefx.count(result.program).macs / prunefx.count(dense).macs  # widths rounded: not the fraction asked
    print(f"accepted: {kept:.3f} of the MACs kept, {budget['speedup']:.2f}x in the search")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    dense_file = export_onnx(dense, out / "dense.onnx").path
    pruned_file = export_onnx(result.program, out / "model.onnx").path
    result.program.save(out / "model.pt2")

    # An independent check: the two delivered files, timed alternately in this process.
    inputs = [example.numpy()]
    check = compare_latency(onnx_runner(dense_file, inputs, threads=args.threads),
                            onnx_runner(pruned_file, inputs, threads=args.threads), runs=args.runs * 2)
    print(f"delivered files: {check.a.median_ms:.2f} ms dense, {check.b.median_ms:.2f} ms pruned "
          f"= {check.speedup:.2f}x (asked {args.speedup:g}x)")
    summary = {"model": args.model, "asked": args.speedup, "search_speedup": budget["speedup"],
               "independent_speedup": check.speedup, "macs_kept": kept,
               "candidates": len(budget["trace"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
