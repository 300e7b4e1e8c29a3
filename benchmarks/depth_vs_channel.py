"""Depth pruning against channel pruning at equal latency, on Fashion-MNIST (UPDP's central claim).

The dense model is the Fashion-MNIST baseline of benchmarks/fashion_mnist_accuracy.py (trained once and
cached in build/fashion_mnist_accuracy/<model>/). Variants, each recovered for the same budget with
knowledge distillation from the dense model:
- depth k: linearize_blocks (count k, progressive: the activations fade out over the first half of the
  recovery) -> distill -> merge_blocks;
- channels f: remove_channels (l2, global, widths in steps of 4) to a fraction f of the MACs -> distill
  (the same runs as fashion_mnist_accuracy.py's prunefx-l2 kd rows, shared through its cache).
Every model, the dense one included, then goes through merge_blocks (batch norms folded) and is timed in
ONNX Runtime at batch 1 against the dense one, alternately in this one process, all variants round by round.

Each model is a section of one results set, benchmarks/results/depth_vs_channel.{json,md}, measured on one
machine in one run.

    python benchmarks/depth_vs_channel.py [--models mobilenetv2_small convnext_fmnist] [--depths 2 4 6]
        [--fractions 0.7 0.5] [--ranks damage damage_per_mac] [--epochs 1] [--threads 2] [--runs 300]
        [--report-only] [--output-dir build/x]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    RESULTS,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    side_by_side,
    write_results,
)
from fashion_mnist_accuracy import (
    BATCH,
    CACHE,
    KD,
    baseline,
    optimizer_settings,
    prune_and_recover,
    run_file,
    run_stem,
)

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, count
from prunefx.graph.rebatch import rebatch
from prunefx.graph.whole_files import write_whole
from prunefx.passes.distill import distill
from prunefx.passes.linearize_blocks import linearize_blocks
from prunefx.passes.merge_blocks import merge_blocks
from prunefx.passes.training.engine import evaluate
from prunefx.runtime import export_onnx, onnx_runner

NAME = "depth_vs_channel"


def depth_variant(model: str, k: int, dense: Program, data, args) -> dict:
    started = time.perf_counter()
    calibration = [batch for batch, _ in zip(data.train, range(4))]
    linearized = linearize_blocks(dense.clone(), config={"count": k, "mode": "progressive", "ramp": 0.5,
                                                         "rank": args.rank, "calibration": calibration,
                                                         "progress": False})
    recovered = distill(linearized.program, config={
        "data": data.train, "epochs": args.epochs, "warmup_steps": 50, "progress": True, "seed": args.seed,
        "teacher": dense.clone().eval(), **optimizer_settings(model, baseline=False), **KD})
    merged = merge_blocks(recovered.program.eval(), config={})
    program = merged.program
    program.save(CACHE / model / f"{depth_name(k, args.rank)}.pt2")
    return {"model": model, "variant": f"depth {k}" + ("" if args.rank == "damage" else f" ({args.rank})"),
            "file": depth_name(k, args.rank), "blocks": linearized.stats["chosen"],
            "merges": len(merged.stats["merges"]), "blends_stripped": len(merged.stats["blends_stripped"]),
            "macs_kept": count(program).macs / count(dense).macs,
            "test_accuracy": evaluate(program, data.test)["accuracy"], "epochs": args.epochs,
            "seconds": time.perf_counter() - started}


def depth_name(k: int, rank: str) -> str:
    return f"depth_k{k}" + ("" if rank == "damage" else f"_{rank}")


def channel_variant(model: str, fraction: float, dense: Program, data, args) -> dict:
    path = run_file(model, "prunefx-l2", "kd", fraction, args.epochs)
    if path.is_file():
        entry = json.loads(path.read_text())
    else:
        entry = prune_and_recover(model, "prunefx-l2", "kd", fraction, dense, data, args)
        write_whole(path, json.dumps(entry, indent=1))
    return {"model": model, "variant": f"channels {fraction:g}", "macs_kept": entry["macs_kept"],
            "test_accuracy": entry["test_accuracy"], "epochs": entry["epochs"], "seconds": entry["seconds"]}


def saved_program(model: str, entry: dict) -> Program:
    if entry["variant"].startswith("depth"):
        return Program.load(CACHE / model / f"{entry.get('file', 'depth_k' + entry['variant'].split()[1])}.pt2")
    fraction = float(entry["variant"].split()[1])
    return Program.load(CACHE / model / f"{run_stem('prunefx-l2', 'kd', fraction, entry['epochs'])}.pt2")


def measure_latency(model: str, dense: Program, entries: list[dict], args) -> None:
    """Batch-1 ONNX Runtime latency of every variant against the dense model (both batch-norm folded), all of
    them round by round (common.side_by_side: `--rounds` rounds sharing `--runs` timed calls a side, the speed-up
    pooled over them with its interval)."""
    with tempfile.TemporaryDirectory(prefix="prunefx-depth-channel-") as tmp:
        def runner(program: Program, name: str):
            folded = merge_blocks(rebatch(program.eval(), 1), config={}).program
            path = export_onnx(folded, Path(tmp) / f"{name}.onnx").path
            return onnx_runner(path, (dense.example_inputs[0][:1],), threads=args.threads)

        reference = runner(dense.clone(), "dense")
        runners = {index: runner(saved_program(model, entry), str(index)) for index, entry in enumerate(entries)}
        timed = side_by_side(reference, runners, rounds=args.rounds, runs=max(args.runs // args.rounds, 10),
                             warmup=20, threads=args.threads)
        for index, entry in enumerate(entries):
            entry["latency"] = timed[index]


def markdown(report: dict) -> str:
    lines = ["# Depth pruning against channel pruning on Fashion-MNIST\n", f"Command: `{report['command']}`\n",
             machine_summary(report["machine"]) + "\n"]
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense test accuracy {100 * info['test_accuracy']:.2f} % "
                     f"({info['epochs']} epochs)\n")
        lines.append(f"Recovery: {report['epochs']} epoch(s) of distillation from the dense model for every variant. "
                     "Latency: ONNX Runtime, batch 1, batch norms folded in every model, each variant timed "
                     "alternately with the dense model, all variants round by round; the speed-up is pooled over "
                     "the rounds, with its 90 % interval (as `prunefx bench --vs` states one).\n")
        rows = [[e["variant"], f"{e['macs_kept']:.3f}", f"**{100 * e['test_accuracy']:.2f}**",
                 f"{100 * (e['test_accuracy'] - info['test_accuracy']):+.2f}",
                 f"{e['latency']['dense_ms']:.3f} / {e['latency']['pruned_ms']:.3f}" if "latency" in e else "",
                 f"**{e['latency']['speedup']:.2f}x**{interval_cell(e['latency'])}" if "latency" in e else "",
                 ", ".join(e.get("blocks", []))]
                for e in report["runs"] if e["model"] == model]
        lines.append(markdown_table(["variant", "MACs kept", "test accuracy %", "vs dense", "latency dense / "
                                     "pruned ms", "speed-up", "blocks linearised"], rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2_small", "convnext_fmnist"])
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 4, 6])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.7, 0.5])
    parser.add_argument("--ranks", nargs="+", default=["damage"], choices=["damage", "damage_per_mac"],
                        help="how linearize_blocks orders the blocks (one set of depth variants per ranking)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds that time every variant against the dense model, runs split among them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only time and tabulate the cached variants")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=5000, seed=args.seed)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "epochs": args.epochs,
              "baselines": {}, "runs": []}
    for model in args.models:
        dense, report["baselines"][model] = baseline(model, data, args)
        report["runs"] += model_runs(model, dense, data, args)
        _, md_path = write_results(NAME, report, markdown(report), folder=args.output_dir)  # a long run keeps each model
    print(md_path.read_text())
    return 0


def model_runs(model: str, dense: Program, data, args) -> list[dict]:
    """Every depth and channel variant of `model` (trained, or read from the cache), timed side by side."""
    entries = []
    for rank in args.ranks:
        args.rank = rank  # depth_variant reads it
        for k in args.depths:
            path = CACHE / model / f"{depth_name(k, args.rank)}.json"
            if not path.is_file() and not args.report_only:
                print(f"[{model}] depth pruning, {k} blocks ranked by {args.rank}", file=sys.stderr)
                write_whole(path, json.dumps(depth_variant(model, k, dense, data, args), indent=1))
            if path.is_file():
                entries.append(json.loads(path.read_text()))
    for fraction in args.fractions:
        if run_file(model, "prunefx-l2", "kd", fraction, args.epochs).is_file() or not args.report_only:
            print(f"[{model}] channel pruning to {fraction} of the MACs", file=sys.stderr)
            entries.append(channel_variant(model, fraction, dense, data, args))
    measure_latency(model, dense, entries, args)
    return entries

if __name__ == "__main__":
    sys.exit(main())
