"""What INT8 adds once a Fashion-MNIST model is pruned, on ONNX Runtime: the evidence behind choose_for_budget
picking width alone on the 28x28 CNNs (benchmarks/results/budget_choice*.md).

For each model, the dense model and, at each kept-MACs fraction and width multiple (`--round-to`), the pruned model as FP32, as prunefx's INT8
file (passes/quantize_int8, mse, in this CPU's lowering) and as onnxruntime.quantization.quantize_static's U8
file made from the pruned FP32 file (the peer: if both INT8 files lose their gain, the runtime's kernels do, not
prunefx's lowering). Pruning is budget_choice's width setting (l2, global ranking, widths rounded to 8, batch
norms re-estimated). Every file of a model is timed in one interleaved run (blocks of `--block` runs each in
turn), batch `--batch`, `--threads` intra-op threads; speed-ups are over the dense FP32 file, and "INT8 gain"
is the pruned FP32 file's median over the pruned INT8 file's, each the runtime's statistic (int8_latency.against:
the ratio of medians, with its 90 % interval over the pairs of blocks of one pass).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_after_pruning.py --models resnet20 mobilenetv2_small

Writes benchmarks/results/int8_after_pruning.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from budget_choice import WIDTH, dense_model
from common import (
    RESULTS,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    publish_results,
    speedup_fields,
)
from int8_latency import _sessions, against, interleaved_blocks

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, count
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime.measure.measured_files import exported_file
from prunefx.runtime.onnx.quantize_static import quantize_static_file

NAME = "int8_after_pruning"
MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
DEFAULT_MODELS = ("resnet20", "mobilenetv2_small")  # the CNNs where choose_for_budget picked width alone
KINDS = ("fp32", "prunefx int8", "ort u8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--round-to", nargs="+", type=int, default=[8, 16],
                        help="width multiples pruned to, each a separate set of files (8 16)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.25, 0.12],
                        help="kept-MACs fractions pruned to (0.5 0.25 0.12); the dense model is always timed")
    parser.add_argument("--batch", type=int, default=1, help="batch timed (1)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (1)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per file (100)")
    parser.add_argument("--block", type=int, default=10, help="runs of one file before the next (10)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per file first (10)")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs a dense model trains if not cached (1)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def pruned(dense: Program, fraction: float, round_to: int, batches) -> Program:
    program = remove_channels(dense.clone(), config={**WIDTH, "round_to": round_to, "macs": fraction,
                                                     "strict": False}).program
    return recalibrate_batchnorm(program, config={"data": batches}).program


def model_files(dense: Program, settings: list[tuple[int, float]], batches, folder: Path,
                batch: int) -> tuple[dict, dict]:
    """(variant -> ONNX file, setting -> MACs kept): the dense FP32 file, then each (round_to, fraction) in
    KINDS; the dense model itself stands for fraction 1."""
    # quantize_static's feed: slices of the timed batch size (its file takes no other), every 8th image at batch 1
    feed = [(x[i:i + batch],) for (x,) in batches for i in range(0, len(x) - batch + 1, max(batch, 8))]
    files, kept = {"dense fp32": exported_file(dense, folder / "dense.onnx", batch)[0]}, {}
    for round_to, fraction in settings:
        key = f"{round_to}/{fraction:g}"
        program = dense if fraction >= 1.0 else pruned(dense, fraction, round_to, batches)
        kept[key] = count(program).macs / count(dense).macs
        stem = folder / f"{round_to}_{fraction}"
        fp32 = exported_file(program, stem.with_name(stem.name + "_fp32.onnx"), batch)[0]
        int8 = quantize_int8(program.clone(), config={"calibration": batches}).program
        files[f"{key} fp32"] = fp32
        files[f"{key} prunefx int8"] = exported_file(int8, stem.with_name(stem.name + "_int8.onnx"), batch)[0]
        files[f"{key} ort u8"] = quantize_static_file(fp32, stem.with_name(stem.name + "_u8.onnx"), feed,
                                                      activations="u8")
    return files, kept


def run_model(name: str, data, args) -> dict:
    dense = dense_model(name, data, args)
    batches = [(inputs,) for inputs, _ in zip((batch[0] for batch in data.train), range(4))]
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-pruned-") as tmp:
        settings = [(1, 1.0)] + [(r, f) for r in args.round_to for f in args.fractions if f < 1.0]
        files, kept = model_files(dense, settings, batches, Path(tmp), args.batch)
        sessions, _ = _sessions(files, args.threads)
        example = torch.zeros(args.batch, *dense.example_inputs[0].shape[1:])
        blocks = interleaved_blocks(sessions, example, args)
    versus_dense = against(blocks, "dense fp32", args.threads)
    rows = {}
    for key in kept:
        versus_fp32 = against({kind: blocks[f"{key} {kind}"] for kind in KINDS}, "fp32", args.threads)
        rows[key] = {"macs_kept": kept[key], "ms": {kind: versus_fp32[kind].b.median_ms for kind in KINDS},
                     **_by_kind("speedup", {kind: versus_dense[f"{key} {kind}"] for kind in KINDS}),
                     **_by_kind("int8_gain", {kind: versus_fp32[kind] for kind in KINDS[1:]})}
    return {"dense_ms": versus_dense["dense fp32"].b.median_ms, "fractions": rows,
            "latency": {variant: comparison.b.to_dict() for variant, comparison in versus_dense.items()}}


def _by_kind(name: str, comparisons: dict) -> dict:
    """`name`, `name`_low and `name`_high, each {kind: value} (speedup_fields), and the interval's confidence."""
    fields = {kind: speedup_fields(comparison, name) for kind, comparison in comparisons.items()}
    return {**{f"{name}{end}": {kind: field[f"{name}{end}"] for kind, field in fields.items()}
               for end in ("", "_low", "_high")}, "confidence": next(iter(fields.values()))["confidence"]}


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# What INT8 adds once a Fashion-MNIST model is pruned (ONNX Runtime)", "",
             machine_summary(report["machine"]), "", f"Command: `{report['command']}`", "",
             f"Batch {settings['batch']}, {settings['threads']} thread(s), {settings['runs']} runs per file, all "
             f"files of a model interleaved in blocks of {settings['block']}. Speed-ups over the dense FP32 file; "
             "INT8 gain = the pruned FP32 file's median latency / the pruned INT8 file's.", ""]
    for model, result in report["models"].items():
        table = [["dense" if key == "1/1" else key, f"{row['macs_kept']:.3f}", f"{row['ms']['fp32']:.3f}",
                  *(f"{row['speedup'][kind]:.2f}x" for kind in KINDS),
                  *(f"{row['int8_gain'][kind]:.2f}x" for kind in KINDS[1:])]
                 for key, row in result["fractions"].items()]
        lines += [f"## {model} (dense FP32 {result['dense_ms']:.3f} ms)", "",
                  markdown_table(["widths / MACs asked", "MACs kept", "FP32 ms", "FP32 speed-up", "prunefx INT8 speed-up",
                                  "ort u8 speed-up", "INT8 gain (prunefx)", "INT8 gain (ort u8)"], table), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    data = fashion_mnist_data(128)
    report = {"machine": machine_info(), "command": command_line(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "models": {}}
    for model in args.models:
        report["models"][model] = run_model(model, data, args)
    return publish_results(NAME, report, markdown(report), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
