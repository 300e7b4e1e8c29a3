"""Where INT8 time goes on ONNX Runtime: the graph ONNX Runtime actually runs, and its kernel time per operator
type, for FP32, prunefx's INT8 file and quantize_static's U8 file, and the model pruned to half its MACs as FP32
and prunefx INT8 (int8_latency's "pruned" variants: where pruned + INT8 falls short of the product of the two
gains), one model at a time. Kernel time is also split three ways: integer operators, the Quantize/Dequantize
conversions between them and float operators, the part INT8 does not speed up.

Wall-clock latency at 2 threads on a shared 2-core machine moves by 5-10 % from run to run (benchmarks/
int8_latency.py); whether two INT8 files differ for a reason shows better here: ONNX Runtime's optimized
graph (SessionOptions.optimized_model_filepath, read with `onnx`: which operators became integer units) and
its own profiler's kernel time per operator type, at 1 intra-op thread, summed over the timed runs and
divided by their number, the files run in alternating blocks. The models, calibration and method (mse) are
benchmarks/int8_latency.py's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_latency.py ... ; \
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_profile.py --models resnet50 efficientnet_b0

Writes benchmarks/results/int8_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from int8_latency import MODELS, PRUNED_ROUND_TO, int8_pair_files

from prunefx.assets import load_imagenet_batch
from prunefx.runtime.ort.kernel_profile import kernel_ms_by_operator
from prunefx.runtime.ort.options import session_options
from prunefx.runtime.ort.runners import timing_flushes_denormals

NAME = "int8_profile"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0"], choices=MODELS)
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per file, interleaved in blocks of 10 (20; 3 warm-up runs are left out)")
    parser.add_argument("--dense-only", action="store_true", help="leave out the pruned model's two files")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    return parser.parse_args(argv)


def profiled_session(path: Path, folder: Path, threads: int = 1) -> tuple[ort.InferenceSession, Path]:
    """A session of `path` (1 thread unless told) with ONNX Runtime's profiler on, and where its optimized graph is
    written: the settings every prunefx timing session has (runtime/ort/options.py: spinning, subnormals flushed as
    a timing flushes them), and the profiler."""
    options = session_options(threads, spinning=True, flush_denormals=timing_flushes_denormals(),
                              profile_prefix=str(folder / path.stem))
    options.optimized_model_filepath = str(folder / f"{path.stem}_optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, Path(options.optimized_model_filepath)


def run_interleaved(sessions, x, runs: int, warmup: int, block: int = 10) -> None:
    """`warmup` runs of each session, then `runs` each in alternating blocks of `block`: the machine's speed
    drifts over minutes on this shared CPU, and timing the files one after another lets the drift decide."""
    feeds = [{session.get_inputs()[0].name: x} for session in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(warmup):
            session.run(None, feed)
    for start in range(0, runs, block):
        for session, feed in zip(sessions, feeds):
            for _ in range(min(block, runs - start)):
                session.run(None, feed)


def kernel_times(session: ort.InferenceSession, optimized: Path, warmup: int) -> dict:
    """The operators ONNX Runtime runs and their kernel microseconds per run, by operator type; the first
    `warmup` runs (allocations, first-touch) are left out by their place in the profile."""
    events = json.loads(Path(session.end_profiling()).read_text())
    ms = kernel_ms_by_operator(events, skip=warmup)  # per run, over the runs after the warm-up
    ran = collections.Counter(node.op_type for node in onnx.load(optimized).graph.node)
    return {"operators_run": dict(ran.most_common()),
            "kernel_us_per_run": {op: 1000 * value for op, value in ms.items()},
            "kernel_ms_per_run": sum(ms.values()),
            "kernel_ms_by_kind": {kind: sum(value for op, value in ms.items() if operator_kind(op) == kind)
                                  for kind in KINDS}}


KINDS = ("integer", "conversions", "float")
CONVERSIONS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def operator_kind(op_type: str) -> str:
    """'integer' for ONNX Runtime's integer kernels (QLinear*, QGemm, *Integer*), 'conversions' for Quantize /
    Dequantize, 'float' for the rest (float compute and layout: what an INT8 file does not speed up)."""
    if op_type in CONVERSIONS:
        return "conversions"
    if op_type.startswith(("QLinear", "QGemm", "QAttention")) or "Integer" in op_type:
        return "integer"
    return "float"


def run_model(name: str, images, runs: int, pruned: bool, warmup: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-profile-") as tmp:
        folder = Path(tmp)
        files = int8_pair_files(name, images, folder, pruned_round_to=PRUNED_ROUND_TO if pruned else None)
        sessions = {variant: profiled_session(path, folder) for variant, path in files.items()}
        run_interleaved([session for session, _ in sessions.values()], images[:1].numpy(), runs, warmup)
        return {variant: kernel_times(session, optimized, warmup)
                for variant, (session, optimized) in sessions.items()}


def markdown(report: dict) -> str:
    text = (f"# Where INT8 time goes on ONNX Runtime (1 thread, ONNX Runtime's profiler)\n\n"
            f"{machine_summary(report['machine'])}\n\nCommand: `{report['command']}`\n")
    for model, variants in report["models"].items():
        rows = [[variant, f"{row['kernel_ms_per_run']:.2f}",
                 " / ".join(f"{row['kernel_ms_by_kind'][kind]:.2f}" for kind in KINDS),
                 ", ".join(f"{op} {count}" for op, count in row["operators_run"].items()),
                 ", ".join(f"{op} {us / 1000:.2f}" for op, us in list(row["kernel_us_per_run"].items())[:5])]
                for variant, row in variants.items()]
        text += (f"\n## {model}\n\n" + markdown_table(["file", "kernel ms per run", "integer / Q-DQ / float ms",
                                                        "operators ONNX Runtime runs", "largest kernel ms per run"],
                                                       rows) + "\n" + _gains_line(variants))
    return text


def _gains_line(variants: dict) -> str:
    """The INT8 gain in kernel time on the dense and on the pruned model, where both were profiled."""
    if "pruned int8" not in variants:
        return ""
    gain = {side: variants[fp32]["kernel_ms_per_run"] / variants[int8]["kernel_ms_per_run"]
            for side, fp32, int8 in (("dense", "fp32", "prunefx int8"), ("pruned", "pruned fp32", "pruned int8"))}
    return (f"\nINT8 gain in kernel time (FP32 / prunefx INT8): dense {gain['dense']:.2f}x, "
            f"pruned {gain['pruned']:.2f}x.\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    images, _ = load_imagenet_batch()
    report = {"command": command_line(), "machine": machine_info(runs=args.runs, threads=1),
              "models": {name: run_model(name, images, args.runs, not args.dense_only) for name in args.models}}
    return publish_results(NAME, report, markdown(report), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
