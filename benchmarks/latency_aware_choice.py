"""latency_aware_choice: channels chosen by measured time against channels chosen by MACs, on ONNX Runtime.

Two choices of which channels go, with the same importance scores and the same widths (multiples of
ONNX Runtime's width multiple on this CPU, runtime/measure/width_multiple.py):
- macs: remove_channels to a fraction of the MACs (importance thresholded across groups);
- latency: remove_channels to a fraction of the time of a per-layer latency table of the dense model
  (`layer_time` with `latency_table`), channels going by importance lost per millisecond saved. The table
  times every convolution, linear layer, self-attention and layer norm alone, at batch 1, with ONNX Runtime at
  --threads threads, a table's entries timed together in one model (runtime/tables/table.py); it is cached per CPU model under --cache-dir.

Part 1, accuracy at the same measured speed-up (Fashion-MNIST, the dense baselines that
benchmarks/fashion_mnist_accuracy.py trains and caches; trained here first when missing): for each
speed-up S, each choice's fraction is searched (bisection, at most --steps candidates) for the smallest cut
whose whole model, exported to ONNX (TorchScript's exporter, as prunefx's own searches time their candidates)
and timed at batch 1 alternately with the dense one, is at least S times faster; then its one-shot test accuracy (obs selection with compensation and batch-norm
recalibration on 512 training images, no fine-tuning, no labels).
Part 2 (--equal-macs), speed-up at equal MACs (random weights at 224 x 224, the models of
benchmarks/prune_latency.py, l2 importance): macs at --macs of the MACs, and latency at the MACs the first
kept, its channels going by the table (benchmarks/table_fraction.py); the files prunefx delivers (dynamo's exporter)
of both timed against the dense model's round by round (--rounds
rounds, each timing both choices, in an order that turns each round), so that a machine that slows down for a
while slows both alike; each choice's speed-up is the runtime's statistic over its rounds (common.side_by_side:
the ratio of the pooled medians, with its 90 % interval over the rounds, as `prunefx bench --vs` gives it).
Part 3, accuracy at equal MACs (part 1's models and pruning): both choices at each --accuracy-macs fraction of the
MACs, the latency choice with the table at that MACs target; the measured speed-up and one-shot test accuracy.

--smoke runs every step on untrained models with tiny settings (batches of 16, 256 test images, 2 candidates,
5 timed runs; its figures mean nothing) and writes under build/latency_aware_choice/smoke unless --results
says where.

    .venv/bin/python benchmarks/latency_aware_choice.py [--speedups 1.3 1.6] [--equal-macs]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import table_fraction
import torch
from common import (
    BUILD,
    RESULTS,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    side_by_side,
    speedup_fields,
    write_results,
)
from fashion_mnist_accuracy import baseline

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, capture, count
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.graph.rebatch import rebatch
from prunefx.models import build_model
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.engine import evaluate
from prunefx.runtime import compare_latency, export_onnx, onnx_runner
from prunefx.runtime.backends import Settings
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple
from prunefx.runtime.tables.table import build_latency_table
from prunefx.runtime.tables.timer_by_name import layer_timer

NAME = "latency_aware_choice"
CACHE = BUILD / NAME
FMNIST_MODELS = ("resnet20", "mobilenetv2_small")
ZOO = {"resnet50": "torchvision:resnet50", "mobilenet_v2": "torchvision:mobilenet_v2",
       "convnext_tiny": "torchvision:convnext_tiny", "vit_small_patch16_224": "timm:vit_small_patch16_224",
       "efficientnet_b0": "timm:efficientnet_b0", "swin_t": "torchvision:swin_t"}
CHOICES = ("macs", "latency")
CALIBRATION_BATCHES = 4


class Timing:
    """The dense model's ONNX runner, and speed-ups of pruned models against it (alternated, batch 1). `exporter`:
    "torchscript" for a search's many candidates (as prunefx's own searches time them), "dynamo" for the files
    prunefx delivers, which the published figures time."""

    def __init__(self, dense: Program, args, folder: Path, exporter: str):
        self.args, self.folder, self.count, self.exporter = args, folder, 0, exporter
        self.example = (dense.example_inputs[0][:1],)
        self.dense = self._runner(dense)

    def _runner(self, program: Program):
        self.count += 1
        path = export_onnx(rebatch(program, 1).eval(), self.folder / f"model{self.count}.onnx",
                           exporter=self.exporter).path
        return onnx_runner(path, self.example, threads=self.args.threads)

    def speedup(self, program: Program) -> dict:
        """One pruned model against the dense one (one comparison, its interval over pairs of blocks)."""
        comparison = compare_latency(self.dense, self._runner(program), warmup=self.args.warmup, runs=self.args.runs,
                                     threads=self.args.threads)
        return {**speedup_fields(comparison), "dense_ms": comparison.a.median_ms, "ms": comparison.b.median_ms}

    def side_by_side(self, programs: dict[str, Program], rounds: int) -> dict[str, dict]:
        """Speed-ups of several pruned models, timed round by round against the dense one (common.side_by_side: a
        machine that slows down for a while slows all of them alike), each pooled over the rounds with its
        interval, and its speed-up of every round kept."""
        runners = {name: self._runner(program) for name, program in programs.items()}
        timed = side_by_side(self.dense, runners, rounds=rounds, runs=max(self.args.runs // rounds, 10),
                             warmup=self.args.warmup, threads=self.args.threads)
        return {name: {**{key: value for key, value in result.items() if key != "pruned_ms"},
                       "ms": result["pruned_ms"]} for name, result in timed.items()}


def latency_table(dense: Program, args):
    timer = layer_timer("ort", Settings(threads=args.threads, runs=args.table_runs, warmup=3))
    return build_latency_table(timed_layers(dense.module), timer, multiple=args.round_to, batch=1,
                               points=args.points, cache_dir=args.cache_dir)


def prune(dense: Program, choice: str, fraction: float, table, options: dict):
    """remove_channels' result on a copy of the dense model, cut to `fraction` of its MACs or of its table time."""
    target = {"macs": fraction} if choice == "macs" else {"layer_time": fraction, "latency_table": table}
    return remove_channels(dense.clone(), config={**target, "strict": False, **options})


def search(dense: Program, choice: str, goal: float, table, timing: Timing, args, calibration) -> dict:
    """The largest fraction (smallest cut) whose measured speed-up is at least `goal`, by bisection."""
    low, high, tried = 0.15, 1.0, []
    fraction = 1.0 / goal
    for _ in range(args.steps):
        program = prune(dense, choice, fraction, table, {"round_to": args.round_to, "calibration": calibration}).program
        measured = timing.speedup(program)
        tried.append({"fraction": fraction, **measured, "program": program})
        if measured["speedup"] >= goal:
            low = fraction
        else:
            high = fraction
        fraction = 0.5 * (low + high)
    reached = [t for t in tried if t["speedup"] >= goal]
    best = max(reached, key=lambda t: t["fraction"]) if reached else max(tried, key=lambda t: t["speedup"])
    return {**best, "reached": bool(reached), "candidates": len(tried)}


def accuracy_rows(model: str, args, data) -> tuple[dict, list[dict], list[dict]]:
    if args.smoke:
        torch.manual_seed(args.seed)
        dense = capture(build_model(f"prunefx:{model}").module, next(iter(data.train))[0], name=model).eval()
        info = {"test_accuracy": evaluate(dense, data.test)["accuracy"], "trained": False}
    else:
        dense, info = baseline(model, data, argparse.Namespace(baseline_epochs=args.baseline_epochs, seed=args.seed))
    calibration = [(batch[0],) for batch, _ in zip(data.train, range(CALIBRATION_BATCHES))]
    table = latency_table(dense, args)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        timing = Timing(dense, args, Path(folder), "torchscript")
        for goal in args.speedups:
            for choice in CHOICES:
                started = time.perf_counter()
                print(f"[{model}] {choice} choice at {goal}x", file=sys.stderr)
                found = search(dense, choice, goal, table, timing, args, calibration)
                program = recalibrate_batchnorm(found.pop("program"), config={"data": calibration}).program
                rows.append({"model": model, "goal": goal, "choice": choice, **found,
                             "macs_kept": count(program).macs / count(dense).macs,
                             "test_accuracy": evaluate(program.eval(), data.test)["accuracy"],
                             "seconds": time.perf_counter() - started})
        at_macs = [at_equal_macs(dense, fraction, table, timing, args, calibration, data)
                   for fraction in args.accuracy_macs]
    return {**info, "table": {"measured": table.measured, "cached": table.cached}}, rows, [
        {"model": model, **row} for rows_at in at_macs for row in rows_at]


def at_equal_macs(dense: Program, fraction: float, table, timing: Timing, args, calibration, data) -> list[dict]:
    """Part 3: both choices at `fraction` of the MACs (the latency choice with the table at that MACs target), each
    with its measured speed-up and one-shot test accuracy, pruned as part 1 prunes."""
    options = {"round_to": args.round_to, "calibration": calibration}
    pruned = {"macs": prune(dense, "macs", fraction, table, options).program,
              "latency": table_fraction.at_macs(dense, table, fraction, options)[0]}
    rows = []
    for choice in CHOICES:
        program = recalibrate_batchnorm(pruned[choice], config={"data": calibration}).program
        rows.append({"macs": fraction, "choice": choice, **timing.speedup(program),
                     "macs_kept": count(program).macs / count(dense).macs,
                     "test_accuracy": evaluate(program.eval(), data.test)["accuracy"]})
    return rows


def equal_macs_rows(model: str, args) -> list[dict]:
    torch.manual_seed(args.seed)
    size = 64 if args.smoke else 224
    dense = capture(build_model(ZOO[model], image_size=size).module.eval(), torch.randn(1, 3, size, size),
                    name=model).eval()
    table = latency_table(dense, args)
    extra = {"importance": "l2", "round_to": args.round_to}
    removed = prune(dense, "macs", args.macs, table, extra)
    by_macs, groups = removed.program, [group["members"][0] for group in removed.stats["groups"]]
    target = count(by_macs).macs / count(dense).macs
    by_latency, _, fraction = table_fraction.at_macs(dense, table, target, extra)
    chosen = {"macs": (by_macs, args.macs), "latency": (by_latency, fraction)}
    dense_widths, dense_table_ms = group_widths(dense, groups), table_fraction.table_ms(table, dense)
    with tempfile.TemporaryDirectory() as folder:
        timed = Timing(dense, args, Path(folder), "dynamo").side_by_side(
            {choice: program for choice, (program, _) in chosen.items()}, args.rounds)
    return [{"model": model, "choice": choice, "fraction": fraction,
             "macs_kept": count(program).macs / count(dense).macs, **timed[choice],
             "table_dense_ms": dense_table_ms, "table_ms": table_fraction.table_ms(table, program),
             "widths": {member: [before, after]
                        for member, before, after in zip(groups, dense_widths, group_widths(program, groups))}}
            for choice, (program, fraction) in chosen.items()]


def group_widths(program: Program, members: list[str]) -> list[int]:
    """The widths of channel groups in `program`, read from their first members ("parameter:dim", as the removal's
    statistics name them) in the program's weights: the same for whichever choice cut them."""
    weights = program.module.state_dict()
    return [int(weights[name].shape[int(dim)]) for name, _, dim in (member.rpartition(":") for member in members)]


def markdown(report: dict) -> str:
    lines = ["# Channels chosen by measured time against channels chosen by MACs (ONNX Runtime, CPU)\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             f"- Widths: multiples of {report['round_to']}; speed-ups at batch 1, {report['threads']} threads, "
             "alternated with the dense model. The latency table times each layer as ONNX Runtime's kernel time of "
             "its operators, without the layout reorders a lone layer needs, its entries side by side in one model "
             "(each entry's weights pushed out of the caches by the others', as in a whole model).\n"]
    if report["smoke"]:
        lines.append("**Smoke run: untrained models and tiny settings; these figures mean nothing.**\n")
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense {100 * info['test_accuracy']:.2f} %\n")
        rows = [[f"{r['goal']:g}x", r["choice"], f"{r['fraction']:.3f}", f"{r['speedup']:.2f}x"
                 + ("" if r["reached"] else " (not reached)"), f"{r['macs_kept']:.3f}",
                 f"**{100 * r['test_accuracy']:.2f}**"] for r in report["accuracy"] if r["model"] == model]
        lines += [markdown_table(["speed-up asked", "choice", "fraction", "measured", "MACs kept", "test %"], rows), ""]
        rows = [[f"{r['macs']:g}", r["choice"], f"{r['macs_kept']:.3f}", f"{r['speedup']:.2f}x",
                 f"**{100 * r['test_accuracy']:.2f}**"] for r in report.get("accuracy_at_macs", []) if r["model"] == model]
        if rows:
            lines += ["At equal MACs (part 3):\n",
                      markdown_table(["MACs asked", "choice", "MACs kept", "measured", "test %"], rows), ""]
    if report["equal_macs"]:
        lines.append("## Speed-up at equal MACs (random weights, l2 importance)\n")
        rows = [[r["model"], r["choice"], f"{r['macs_kept']:.3f}", f"{r['dense_ms']:.2f}", f"{r['ms']:.2f}",
                 f"**{r['speedup']:.2f}x**", *_table_cells(r)] for r in report["equal_macs"]]
        lines.append(markdown_table(["model", "choice", "MACs kept", "dense ms", "pruned ms", "speed-up",
                                     "table: dense ms", "table: pruned ms", "table: speed-up"], rows))
        lines.append("\nThe table's columns: the sum of its times of the model's timed layers (convolutions, linear "
                     "layers, self-attention, layer norms) at their widths, and the speed-up that sum predicts.\n")
        lines += ["Where the two choices' widths differ most (channel groups by their first member: dense width, "
                  "MACs choice, latency choice):\n", *_widest_differences(report["equal_macs"])]
    return "\n".join(lines)


def _widest_differences(rows: list[dict], shown: int = 4) -> list[str]:
    """A line per model: its `shown` groups whose kept widths differ most between the choices, relative to dense."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        widths = {row["choice"]: row.get("widths", {}) for row in rows if row["model"] == model}
        macs, latency = widths.get("macs", {}), widths.get("latency", {})
        common = [member for member in macs if member in latency]
        common.sort(key=lambda member: -abs(macs[member][1] - latency[member][1]) / macs[member][0])
        if common:
            lines.append(f"- {model}: " + "; ".join(f"`{member}` {macs[member][0]}: {macs[member][1]}, "
                                                    f"{latency[member][1]}" for member in common[:shown]))
    return lines


def _table_cells(row: dict) -> list[str]:
    if "table_ms" not in row:
        return ["", "", ""]
    return [f"{row['table_dense_ms']:.2f}", f"{row['table_ms']:.2f}", f"{row['table_dense_ms'] / row['table_ms']:.2f}x"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(FMNIST_MODELS), choices=FMNIST_MODELS)
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.3, 1.6])
    parser.add_argument("--equal-macs", nargs="*", default=None, choices=list(ZOO),
                        help="part 2 on these models (all when given alone)")
    parser.add_argument("--macs", type=float, default=0.5, help="the MACs fraction of part 2")
    parser.add_argument("--accuracy-macs", nargs="*", type=float, default=[0.7, 0.5],
                        help="part 3: the MACs fractions at which both choices' accuracy is compared")
    parser.add_argument("--round-to", type=int, default=None, help="default: ONNX Runtime's multiple on this CPU")
    parser.add_argument("--steps", type=int, default=6, help="candidates measured per choice and speed-up")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5,
                        help="part 2: rounds that time both choices against the dense model, runs split among them")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--table-runs", type=int, default=10, help="timed runs per table entry (at most 10)")
    parser.add_argument("--points", type=int, default=4, help="widths per axis in the latency table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="latency tables (default ~/.cache/prunefx)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="every step, untrained and tiny: checks it runs")
    args = parser.parse_args(argv)
    args.round_to = args.round_to or onnxruntime_multiple()
    if args.equal_macs == []:
        args.equal_macs = list(ZOO)
    if args.smoke:
        args.speedups, args.steps, args.runs, args.warmup, args.table_runs, args.points = [1.2], 2, 5, 1, 3, 2
        args.accuracy_macs = [0.5]
        args.rounds = 2
        args.results = args.results or CACHE / "smoke"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "smoke": args.smoke,
              "round_to": args.round_to, "threads": args.threads, "baselines": {}, "accuracy": [], "accuracy_at_macs": [],
              "equal_macs": []}
    if args.models:
        data = fashion_mnist_data(16 if args.smoke else 128, validation=5000, seed=args.seed)
        if args.smoke:  # batches of 16, 256 test images
            data = dataclasses.replace(data, test=[batch for batch, _ in zip(data.test, range(16))])
        for model in args.models:
            report["baselines"][model], rows, at_macs = accuracy_rows(model, args, data)
            report["accuracy"] += rows
            report["accuracy_at_macs"] += at_macs
    for model in args.equal_macs or ():
        report["equal_macs"] += equal_macs_rows(model, args)
    json_path, md_path = write_results(NAME, report, markdown(report), folder=args.results or RESULTS)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
