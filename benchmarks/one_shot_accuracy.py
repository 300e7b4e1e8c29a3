"""one_shot_accuracy: accuracy right after pruning, without fine-tuning or labels.

Fashion-MNIST models of the accuracy benchmark (the dense baselines it trains and caches in
build/fashion_mnist_accuracy/; trained here first when missing), pruned once to 0.5 and 0.33 of
their MACs, then measured on the 10,000 test images with no training at all:
- tp-l2: Torch-Pruning, MagnitudeImportance(p=2), uniform ratio (nothing else);
- magnitude: prunefx remove_channels, l2, global ranking, round_to 4;
- + recalibration: then recalibrate_batchnorm (exact statistics on the calibration images);
- + compensation: remove_channels with compensate (least-squares update of every layer that loses
  input channels, H = X^T X on the calibration images), then recalibrate_batchnorm.
Calibration: 512 training images (4 batches of 128), labels unused.

    .venv/bin/python benchmarks/one_shot_accuracy.py [--models resnet20 ...] [--fractions 0.5 0.33]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import command_line, machine_info, machine_summary, markdown_table, write_results
from fashion_mnist_accuracy import BATCH, baseline, torch_pruning

from prunefx.data import fashion_mnist_data
from prunefx.graph import count
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training import evaluate

NAME = "one_shot_accuracy"
MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
VARIANTS = ("tp-l2", "magnitude", "+ recalibration", "+ compensation")
CALIBRATION_BATCHES = 4


def prune(variant: str, model: str, dense, fraction: float, calibration) -> tuple:
    if variant == "tp-l2":
        return torch_pruning(model, dense, fraction), {}
    program = dense.clone()
    config = {"macs": fraction, "importance": "l2", "ranking": "global", "round_to": 4}
    if variant == "+ compensation":
        config.update(compensate=True, calibration=calibration)
    stats = remove_channels(program, config=config).stats
    if variant != "magnitude":
        recalibrate_batchnorm(program, config={"data": calibration})
    return program, stats.get("compensation", {})


def run_model(model: str, data, args) -> tuple[dict, list[dict]]:
    dense, info = baseline(model, data, argparse.Namespace(baseline_epochs=args.baseline_epochs, seed=args.seed))
    calibration = [inputs for inputs, _ in zip((b[0] for b in data.train), range(CALIBRATION_BATCHES))]
    calibration = [(x,) for x in calibration]
    rows = []
    for fraction in args.fractions:
        for variant in VARIANTS:
            started = time.perf_counter()
            print(f"[{model}] {variant} at {fraction}", file=sys.stderr)
            program, compensation = prune(variant, model, dense, fraction, calibration)
            rows.append({"model": model, "fraction": fraction, "variant": variant,
                         "macs_kept": count(program).macs / count(dense).macs,
                         "test_accuracy": evaluate(program.eval(), data.test)["accuracy"],
                         "layers_compensated": len(compensation.get("compensated", [])),
                         "seconds": time.perf_counter() - started})
    return info, rows


def markdown(report: dict) -> str:
    lines = ["# One-shot pruning on Fashion-MNIST: no fine-tuning, no labels\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             "- Dense baselines: trained by benchmarks/fashion_mnist_accuracy.py (cached); accuracy on the 10,000 "
             "test images. Calibration: 512 training images, labels unused.",
             "- Second-order *selection* (scoring channels by their compensated error) is not implemented yet.\n"]
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense {100 * info['test_accuracy']:.2f} %\n")
        rows = [[f"{r['fraction']:g}", r["variant"], f"{r['macs_kept']:.3f}", f"**{100 * r['test_accuracy']:.2f}**",
                 f"{100 * (r['test_accuracy'] - info['test_accuracy']):+.2f}"]
                for r in report["runs"] if r["model"] == model]
        lines.append(markdown_table(["MACs target", "variant", "MACs kept", "test %", "vs dense (points)"], rows))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.33])
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=5000, seed=args.seed)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "baselines": {}, "runs": []}
    for model in args.models:
        report["baselines"][model], rows = run_model(model, data, args)
        report["runs"] += rows
    json_path, md_path = write_results(NAME, report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
