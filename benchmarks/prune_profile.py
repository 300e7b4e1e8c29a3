"""prune_profile: where ONNX Runtime's time goes in a model pruned to half its MACs, operator type by type.

prune_latency's target asks a pruned model's speed-up to be at least 0.9 of its MACs reduction; where it is
missed, this says which operators did not shrink with the MACs. For each model of prune_latency (random weights,
1x3x224x224): the dense model and prune_latency's "prunefx-global" variant (l2 importance, global ranking, widths
x16, half the MACs), both exported with export_onnx, run in alternating blocks of 10 with ONNX Runtime's profiler
on (the session settings of every prunefx timing, `--threads` threads, spinning), and their kernel time per run
summed by operator type (runtime/ort/kernel_profile.py). The profiler's kernel times leave out what a run costs
besides its operators, so their ratio is close to, not the same as, prune_latency's wall-clock speed-up.

    .venv/bin/python benchmarks/prune_profile.py [--models resnet50 ...] [--runs 100] [--threads 2]

Writes benchmarks/results/prune_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import command_line, machine_info, machine_summary, markdown_table, publish_results
from int8_profile import profiled_session, run_interleaved
from prune_latency import INPUT_SHAPE, MODELS, TARGET_RATIO, VARIANTS, prune_prunefx

from prunefx.graph import capture, count
from prunefx.models import build_model
from prunefx.runtime import export_onnx
from prunefx.runtime.ort.kernel_profile import kernel_ms_by_operator

NAME = "prune_profile"
VARIANT = "prunefx-global"
# ONNX Runtime's operators that multiply by weights or by activations: what a MAC count counts
PRODUCTS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Attention",
                      "MultiHeadAttention"})
WARMUP = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=100, help="profiled runs of each file (after 10 warm-up runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=None, help="default: benchmarks/results")
    return parser.parse_args(argv)


def profile_model(name: str, args) -> dict:
    torch.manual_seed(args.seed)
    dense_module = build_model(MODELS[name]).module.eval()
    example = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(args.seed))
    dense = capture(dense_module, example, name=name).eval()
    print(f"[{name}] pruning to {args.macs} of the MACs ...", file=sys.stderr)
    pruned, _ = prune_prunefx(dense_module, example, VARIANTS[VARIANT], args.macs)
    with tempfile.TemporaryDirectory(prefix="prunefx-prune-profile-") as tmp:
        folder = Path(tmp)
        files = {"dense": export_onnx(dense, folder / "dense.onnx").path,
                 "pruned": export_onnx(pruned, folder / "pruned.onnx").path}
        sessions = {side: profiled_session(path, folder, args.threads)[0] for side, path in files.items()}
        print(f"[{name}] profiling dense and pruned, {args.runs} runs each ...", file=sys.stderr)
        run_interleaved(list(sessions.values()), example.numpy(), args.runs, WARMUP)
        by_operator = {side: kernel_ms_by_operator(json.loads(Path(session.end_profiling()).read_text()), skip=WARMUP)
                       for side, session in sessions.items()}
    return {"model": MODELS[name], "macs_reduction": count(dense).macs / count(pruned).macs,
            "kernel_ms_per_run": by_operator}


def _total(times: dict[str, float], products: bool | None = None) -> float:
    return sum(ms for op, ms in times.items() if products is None or (op in PRODUCTS) == products)


def summary_row(name: str, entry: dict) -> list[str]:
    dense, pruned = entry["kernel_ms_per_run"]["dense"], entry["kernel_ms_per_run"]["pruned"]
    whole = _total(dense) / _total(pruned)
    others = _total(dense, False) / _total(pruned, False) if _total(pruned, False) else float("nan")
    return [name, f"{entry['macs_reduction']:.2f}x", f"{_total(dense):.2f}", f"{_total(pruned):.2f}",
            f"**{whole:.2f}x** ({whole / entry['macs_reduction']:.2f})",
            f"{_total(dense, True) / _total(pruned, True):.2f}x", f"{others:.2f}x",
            f"{100 * _total(dense, False) / _total(dense):.0f} % -> {100 * _total(pruned, False) / _total(pruned):.0f} %"]


def operator_rows(entry: dict) -> list[list[str]]:
    dense, pruned = entry["kernel_ms_per_run"]["dense"], entry["kernel_ms_per_run"]["pruned"]
    rows = []
    for op in sorted(set(dense) | set(pruned), key=lambda op: (-dense.get(op, 0.0), op)):
        before, after = dense.get(op, 0.0), pruned.get(op, 0.0)
        rows.append([op, f"{before:.3f}", f"{after:.3f}", f"{before / after:.2f}x" if after else "gone",
                     f"{100 * (before - after) / (_total(dense) - _total(pruned)):.0f} %"])
    return rows


def markdown(report: dict) -> str:
    lines = ["# Where the time of a pruned model goes, operator by operator (ONNX Runtime, CPU)\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             f"- Dense against prune_latency's `{VARIANT}` variant at {report['macs']} of the MACs, batch 1, "
             f"{report['threads']} threads; kernel milliseconds per run from ONNX Runtime's profiler, "
             f"{report['runs']} runs each, alternated in blocks of 10.",
             f"- Products: {', '.join(sorted(PRODUCTS))} (the operators a MAC count counts). The ratio in "
             f"brackets is the kernel-time speed-up over the MACs reduction (prune_latency's target: "
             f"{TARGET_RATIO}).\n",
             markdown_table(["model", "MACs reduction", "dense ms", "pruned ms", "kernel speed-up", "products",
                             "other operators", "other operators' share"],
                            [summary_row(name, entry) for name, entry in report["models"].items()]), ""]
    for name, entry in report["models"].items():
        lines += [f"## {name}\n", markdown_table(["operator", "dense ms", "pruned ms", "speed-up", "share of the time saved"],
                                                operator_rows(entry)), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads, runs=args.runs),
              "macs": args.macs, "threads": args.threads, "runs": args.runs,
              "models": {name: profile_model(name, args) for name in args.models}}
    folder = {} if args.output_dir is None else {"folder": args.output_dir}
    return publish_results(NAME, report, markdown(report), **folder)


if __name__ == "__main__":
    sys.exit(main())
