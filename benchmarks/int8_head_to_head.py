"""prunefx's ONNX Runtime INT8 file against quantize_static's default (U8) file, head to head, with an interval.

benchmarks/int8_latency.py times seven variants per model; on this shared 2-core machine two files of nearly
the same speed swap places from one run to the next (MobileNetV2: prunefx 1.47x against 1.44x in one run,
1.44x against 1.55x in another). Here only the two INT8 files are timed, in many independent rounds of
runtime/measure/latency.compare_latency (alternating blocks of 10 runs), and each round gives one speed ratio,
quantize_static's median / prunefx's median (above 1: prunefx is faster). The report states it as the runtime
does (runtime/measure/latency.py's pooled_rounds: the ratio of the medians pooled over the rounds, Student's t
interval over the rounds, at 95 %): an interval that contains 1 means the two files cannot be told apart at this
precision; one below 1 means prunefx is slower.

Files, calibration and method are int8_latency.py's (ImageNet-sample calibration, mse, this CPU's lowering).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_head_to_head.py [--models mobilenet_v2 resnet50] \
        [--threads 1 2] [--rounds 40] [--runs 50]

Writes benchmarks/results/int8_head_to_head.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    BLOCK,
    RESULTS,
    SETTLE,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    publish_results,
)
from int8_latency import MODELS, int8_pair_files
from tqdm import tqdm

from prunefx.assets import load_imagenet_batch
from prunefx.runtime.measure.latency import pooled_rounds, timing_round
from prunefx.runtime.ort.runners import onnx_runner

NAME = "int8_head_to_head"
CONFIDENCE = 0.95


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"], choices=MODELS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=40, help="independent comparisons per model and thread count")
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each file per round")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def head_to_head(files: dict[str, Path], inputs: tuple, threads: int, args) -> dict:
    """`args.rounds` rounds of the two files timed alternately, stated as the runtime states a comparison (the
    pooled ratio and its 95 % interval over the rounds), with each round's own ratio."""
    ours = onnx_runner(files["prunefx int8"], inputs, threads=threads)
    theirs = onnx_runner(files["ort u8"], inputs, threads=threads)
    rounds = [timing_round(lambda: theirs, lambda: ours, 10, args.runs, BLOCK, SETTLE, time.perf_counter, threads)
              for _ in tqdm(range(args.rounds), desc=f"{threads} thread(s)", leave=False)]
    pooled = pooled_rounds(rounds, confidence=CONFIDENCE)
    ratios = [pooled_rounds([one]).speedup for one in rounds]
    return {"ratio": pooled.speedup, "interval_95": [pooled.speedup_low, pooled.speedup_high],
            "confidence": CONFIDENCE, "prunefx_ms_median": pooled.b.median_ms, "ort_u8_ms_median": pooled.a.median_ms,
            "rounds_prunefx_faster": sum(ratio > 1 for ratio in ratios), "rounds": len(ratios), "ratios": ratios}


def run_model(name: str, images, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-h2h-") as tmp:
        files = int8_pair_files(name, images, Path(tmp))
        inputs = (images[:1],)
        return {str(threads): head_to_head(files, inputs, threads, args) for threads in args.threads}


def verdict(row: dict) -> str:
    low, high = row["interval_95"]
    if low > 1:
        return "prunefx faster"
    if high < 1:
        return "prunefx slower"
    return "cannot be told apart"


def markdown(report: dict, info: dict) -> str:
    rows = [[model, threads, f"{row['prunefx_ms_median']:.2f}", f"{row['ort_u8_ms_median']:.2f}",
             f"{row['ratio']:.3f}", f"{row['interval_95'][0]:.3f} - {row['interval_95'][1]:.3f}",
             f"{row['rounds_prunefx_faster']} of {row['rounds']}", verdict(row)]
            for model, by_threads in report["models"].items() for threads, row in by_threads.items()]
    return (f"# prunefx INT8 against quantize_static U8, head to head (ONNX Runtime, batch 1, 224x224)\n\n"
            f"{machine_summary(info)}; load average at start {info['load_average_at_start']}, at end "
            f"{report['load_average_at_end']}.\n\nCommand: `{report['command']}`\n\n"
            f"{info['rounds']} rounds of {info['runs']} alternating runs per file; ratio = quantize_static's "
            f"median / prunefx's pooled over the rounds (above 1: prunefx faster); interval: 95 % Student's t over "
            "the rounds, the runtime's statistic.\n\n"
            + markdown_table(["model", "threads", "prunefx ms", "quantize_static u8 ms", "ratio", "95 % interval",
                              "rounds prunefx faster", "verdict"], rows) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    images, _ = load_imagenet_batch()
    info = machine_info(rounds=args.rounds, runs=args.runs, threads=args.threads)
    report = {"command": command_line(), "models": {name: run_model(name, images, args) for name in args.models}}
    report["load_average_at_end"] = list(os.getloadavg())
    return publish_results(NAME, report, markdown(report, info), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
