"""INT8 after pruning, for TensorRT: prune to a MACs fraction with widths on multiples of 32 (what INT8
tensor cores want), quantize with calibration images in TensorRT's explicit form (symmetric INT8, per
channel weights, per tensor activations), write the S8 Q/DQ file TensorRT builds strongly typed engines
from, and the file lowered for ONNX Runtime on this CPU, each checked against the Program.

How-to: docs/howto/int8-tensorrt.md. Run it:

    .venv/bin/python examples/int8_after_pruning.py --model torchvision:resnet18 -o out/r18int8-example

then, on any machine, `prunefx check out/r18int8-example/model_trt.onnx --target trt10`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import prunefx
from prunefx.models import build_model, parse_input_shape
from prunefx.passes import quantize_int8, remove_channels
from prunefx.runtime import check_parity, export_quantized_onnx, onnxruntime_lowering


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="torchvision:resnet18", help="any reference `prunefx inspect` takes")
    parser.add_argument("--input-shape", default="1x3x224x224")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--round-to", type=int, default=32, help="width multiple: 32 for INT8 tensor cores")
    parser.add_argument("--calibration-batches", type=int, default=8,
                        help="batches the activation ranges are read from (use real images: see the how-to)")
    parser.add_argument("-o", "--output", default="out/int8_after_pruning", help="output folder")
    return parser.parse_args(argv)


def calibration_batches(shape, count: int) -> list[tuple[torch.Tensor]]:
    """Stand-in calibration data so the example runs anywhere; give real training images instead
    (`prunefx quantize --calibrate DATA` reads an image folder)."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(shape, generator=generator),) for _ in range(count)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    shape = parse_input_shape(args.input_shape)
    program = prunefx.capture(build_model(args.model).module, torch.randn(shape), name=args.model)
    batches = calibration_batches(shape, args.calibration_batches)
    steps = [(remove_channels, {"macs": args.macs, "round_to": args.round_to, "importance": "l2"}),
             (quantize_int8, {"calibration": batches})]
    result = prunefx.Pipeline(steps).run(program)
    pruned = result.stats()["remove_channels"]
    print(f"pruned to {pruned['macs_after'] / pruned['macs_before']:.3f} of the MACs, widths x{args.round_to}")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"model_trt.onnx": "s8", "model_ort.onnx": onnxruntime_lowering()}
    summary = {"model": args.model, "macs_kept": pruned["macs_after"] / pruned["macs_before"]}
    for name, lowering in files.items():
        path = export_quantized_onnx(result.program, out / name, activations=lowering).path
        error = check_parity(result.program, path).relative  # ONNX Runtime runs both lowerings
        print(f"{name} ({lowering}): relative error {error:.2e} against the fake-quantized Program")
        summary[name] = {"lowering": lowering, "relative_error": error}
    result.program.save(out / "model.pt2")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
