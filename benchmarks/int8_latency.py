"""INT8 on ONNX Runtime: FP32 vs prunefx's quantize_int8 (S8 and U8 lowerings) vs ONNX Runtime's quantize_static.

For each model (torchvision, 1x3x224x224, batch 1): MobileNetV2 with its ImageNet weights (the offline
package, DESIGN.md), ResNet-18 with random weights and realistic batch norms (latency does not depend on the
weight values). Calibration: the first 10 of the 20 offline ImageNet images and their mirror images (20
batches of 1). Variants, all from the same FP32 Program:
- fp32: runtime/onnx_export.export_onnx;
- prunefx s8 / u8 / u8u8: passes/quantize_int8 (percentile 99.99 by default) lowered by
  runtime/onnx_quantized.export_quantized_onnx: symmetric S8 activations (TensorRT's file); the same scales
  shifted to U8 (zero-point 128, same real values) with integer units for ONNX Runtime (U8S8 kernels); and
  the same with the integer units' weights shifted to U8 too (U8U8 kernels, which do not saturate on CPUs
  without VNNI);
- ort u8 / ort s8: onnxruntime.quantization.quantize_static on the FP32 file, QDQ, per-channel weights,
  MinMax calibration on the same images; its default U8 asymmetric activations, and symmetric S8 (what a
  TensorRT user would pick).
Latency: every variant timed in this one process, interleaved in blocks (a block of runs of each variant in
turn, repeated), median / p90 of single runs, ONNX Runtime CPU at --threads intra-op threads. Accuracy (only
MobileNetV2 has real weights): top-1 agreement with FP32 on the 10 held-out images and top-1 accuracy on all
20 images; for both models, the largest output difference from FP32 relative to the largest FP32 output.

With `--fashion-mnist MODEL ...` (prunefx/small_models.py: resnet20, mobilenetv2_small), test accuracy on
the 10,000 Fashion-MNIST test images of the same variants, for a model trained here (`--train-epochs`, SGD,
cached in build/int8_latency/) and calibrated on 8 training batches of 128; ONNX Runtime at batch 128.

Writes benchmarks/results/int8_latency.json and .md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_latency.py [--runs 40] [--threads 2] \
        [--fashion-mnist mobilenetv2_small resnet20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from common import (
    REPO,
    RESULTS,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    realistic_batchnorm,
    relative_difference,
    write_results,
)

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.data import fashion_mnist_data
from prunefx.graph import Program, capture
from prunefx.models import build_model
from prunefx.passes.distill import distill
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import LatencyStats, OnnxRuntimeSession, export_onnx
from prunefx.runtime.onnx_quantized import export_quantized_onnx, quantize_static_file

NAME = "int8_latency"
MODELS = ("resnet18", "mobilenet_v2")
VARIANTS = ("fp32", "prunefx s8", "prunefx u8", "prunefx u8u8", "ort u8", "ort s8")
HELD_OUT = slice(10, 20)
FASHION_MNIST_MODELS = ("resnet20", "mobilenetv2_small")
FASHION_MNIST_BATCH = 128
CACHE = REPO / "build" / NAME


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant (default 40)")
    parser.add_argument("--block", type=int, default=5, help="runs per variant before the next one (default 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--method", default="percentile", choices=("max", "percentile", "mse", "entropy"),
                        help="prunefx activation calibration (default percentile)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS, metavar="NAME")
    parser.add_argument("--fashion-mnist", nargs="*", default=[], choices=FASHION_MNIST_MODELS, metavar="NAME",
                        help="also measure test accuracy on Fashion-MNIST for these small models")
    parser.add_argument("--train-epochs", type=int, default=2, help="epochs the Fashion-MNIST models train (2)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    return parser.parse_args(argv)


def build(name: str) -> torch.nn.Module:
    if name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    return realistic_batchnorm(torchvision.models.resnet18(weights=None), (1, 3, 224, 224)).eval()


def calibration(images: torch.Tensor) -> list[tuple[torch.Tensor]]:
    first = images[:10]
    return [(x.unsqueeze(0),) for x in torch.cat([first, first.flip(-1)])]


def variant_files(name: str, folder: Path, batches, method: str, program: Program | None = None) -> dict[str, Path]:
    program = program or capture(build(name), torch.randn(1, 3, 224, 224), name=name).eval()
    files = {"fp32": export_onnx(program, folder / f"{name}.onnx").path}
    started = time.perf_counter()
    stats = quantize_int8(program, config={"calibration": batches, "method": method}).stats
    print(f"{name}: quantize_int8 {len(stats['quantized'])} layers in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    for kind in ("s8", "u8", "u8u8"):
        files[f"prunefx {kind}"] = export_quantized_onnx(program, folder / f"{name}_{kind}.onnx", activations=kind).path
    for kind in ("u8", "s8"):
        files[f"ort {kind}"] = quantize_static_file(files["fp32"], folder / f"{name}_ort_{kind}.onnx", batches,
                                                    activations=kind)
    return files


def accuracy(sessions: dict, images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict]:
    outputs = {variant: np.concatenate([session.run(x.unsqueeze(0))[0] for x in images])
               for variant, session in sessions.items()}
    reference = outputs["fp32"].argmax(1)
    return {variant: {"top1_all_20": float((out.argmax(1) == labels.numpy()).mean()),
                      "agreement_held_out_10": float((out.argmax(1) == reference)[HELD_OUT].mean()),
                      "relative_output_difference": relative_difference(outputs["fp32"], out)}
            for variant, out in outputs.items()}


def interleaved_latency(sessions: dict, x: torch.Tensor, args) -> dict[str, dict]:
    """Blocks of `block` runs of each variant in turn until each has `runs`: machine noise hits all alike."""
    runners = {variant: session.runner(x) for variant, session in sessions.items()}
    for runner in runners.values():
        for _ in range(args.warmup):
            runner()
    samples = {variant: [] for variant in runners}
    while len(samples[VARIANTS[0]]) < args.runs:
        for variant, runner in runners.items():
            for _ in range(args.block):
                started = time.perf_counter()
                runner()
                samples[variant].append(time.perf_counter() - started)
    return {variant: LatencyStats.from_seconds(times, threads=args.threads).to_dict()
            for variant, times in samples.items()}


def run_model(name: str, images, labels, args) -> dict:
    batches = calibration(images)
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-") as tmp:
        files = variant_files(name, Path(tmp), batches, args.method)
        sessions = {variant: OnnxRuntimeSession(files[variant], threads=args.threads) for variant in VARIANTS}
        quality = accuracy(sessions, images, labels)
        latency = interleaved_latency(sessions, images[:1], args)
    fp32 = latency["fp32"]["median_ms"]
    return {variant: {**latency[variant], "speedup_vs_fp32": fp32 / latency[variant]["median_ms"], **quality[variant]}
            for variant in VARIANTS}


def trained_fashion_mnist(name: str, data, epochs: int) -> Program:
    """The model trained `epochs` epochs on Fashion-MNIST (cached: training takes minutes on these CPUs)."""
    path = CACHE / f"{name}_{epochs}epochs.pt2"
    if path.is_file():
        return Program.load(path).eval()
    torch.manual_seed(0)
    program = capture(build_model(f"prunefx:{name}").module, next(iter(data.train))[0], name=name)
    started = time.perf_counter()
    program = distill(program, config={"data": data.train, "epochs": epochs, "kd_weight": 0.0, "seed": 0,
                                       "warmup_steps": len(data.train) // 2, "optimizer": "sgd", "lr": 0.1,
                                       "weight_decay": 5e-4, "momentum": 0.9}).program.eval()
    print(f"{name}: trained {epochs} epochs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    program.save(path)
    return program


def test_accuracy(session: OnnxRuntimeSession, batches) -> float:
    correct = total = 0
    for inputs, labels in batches:
        predicted = session.run(inputs)[0].argmax(1)
        valid = labels.numpy() >= 0  # -1 pads the last batch
        correct += int((predicted[valid] == labels.numpy()[valid]).sum())
        total += int(valid.sum())
    return correct / total


def fashion_mnist_accuracy(name: str, args) -> dict[str, float]:
    data = fashion_mnist_data(FASHION_MNIST_BATCH, augment=True)
    program = trained_fashion_mnist(name, data, args.train_epochs)
    calibration = [(inputs,) for inputs, _ in zip((batch[0] for batch in data.train), range(8))]
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-") as tmp:
        files = variant_files(name, Path(tmp), calibration, args.method, program=program.clone())
        return {variant: test_accuracy(OnnxRuntimeSession(files[variant], threads=args.threads), data.test)
                for variant in VARIANTS}


def markdown(report: dict, info: dict) -> str:
    rows = []
    for model, variants in report["models"].items():
        for variant, row in variants.items():
            top1 = (f"{row['top1_all_20']:.2f} / {row['agreement_held_out_10']:.2f}" if model == "mobilenet_v2"
                    else "random weights")
            rows.append([model, variant, f"{row['median_ms']:.2f}", f"{row['p90_ms']:.2f}",
                         f"{row['speedup_vs_fp32']:.2f}x", top1, f"{row['relative_output_difference']:.3g}"])
    table = markdown_table(["model", "variant", "median ms", "p90 ms", "vs FP32", "top-1 (20) / agreement (10)",
                            "max output diff / max output"], rows)
    text = (f"# INT8 on ONNX Runtime: prunefx vs quantize_static\n\n{machine_summary(info)}\n\n"
            f"Command: `{report['command']}`\n\nBatch 1, 1x3x224x224, {info['threads']} ONNX Runtime threads, "
            f"{info['runs']} interleaved runs per variant. prunefx calibration: {info['method']}.\n\n{table}\n")
    if report.get("fashion_mnist"):
        rows = [[model, *(f"{100 * accuracy[variant]:.2f}" for variant in VARIANTS)]
                for model, accuracy in report["fashion_mnist"].items()]
        text += (f"\n## Fashion-MNIST test accuracy (%, 10,000 images; models trained {info['train_epochs']} "
                 f"epochs here)\n\n" + markdown_table(["model", *VARIANTS], rows) + "\n")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    images, labels = load_imagenet_batch()
    info = machine_info(threads=args.threads, runs=args.runs, block=args.block, method=args.method,
                        train_epochs=args.train_epochs)
    report = {"command": command_line(), "machine": info,
              "models": {name: run_model(name, images, labels, args) for name in args.models},
              "fashion_mnist": {name: fashion_mnist_accuracy(name, args) for name in args.fashion_mnist}}
    json_path, md_path = write_results(NAME, report, markdown(report, info), folder=args.output_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
