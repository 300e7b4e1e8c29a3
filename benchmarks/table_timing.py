"""table_timing: how far a latency table's entries, and the channels it chooses, move from one build to the next,
timed as prunefx's ONNX Runtime timer did before (each layer alone, again and again: its weights stay in the caches)
and as it does now (a sweep's entries side by side in one model, each run after all the others: its weights come
from memory, as in a whole model; runtime/tables/table_model.py), with each entry one reading or the median of
three sweeps over the table.

For each model (random weights, 224 x 224, l2 importance, widths of ONNX Runtime's multiple on this CPU): --builds
tables of each kind, each in a cache folder of its own (everything timed), the kinds alternated so that all meet
the machine alike; ONNX Runtime at --threads threads, batch 1.
- Entries: every two builds of a kind compared entry by entry, each ratio divided by the pair's median ratio (a
  table that drifts as a whole chooses the same channels): the share of entries more than 10 % apart, the 5th and
  95th percentiles of the ratios and the farthest, pooled over the pairs. Dense sum: the table's time of the dense
  model's timed layers, beside the dense model's measured time.
- Choices: with each table, the latency choice at the MACs the MACs choice keeps at --macs (table_fraction.at_macs,
  as latency_aware_choice.py part 2); every plan and the MACs choice, exported as prunefx delivers them (dynamo),
  timed against the dense model round by round in one run (common.side_by_side, --rounds rounds): the speed-ups
  of each kind's plans, and how many distinct plans its builds chose.

    .venv/bin/python benchmarks/table_timing.py [--models convnext_tiny resnet50 mobilenet_v2] [--builds 4]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import table_fraction
import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, write_results
from latency_aware_choice import ZOO, Timing

from prunefx.graph import Program, capture, count
from prunefx.graph.channels.timed_layers import timed_layers
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple
from prunefx.runtime.tables.table import LatencyTable, build_latency_table
from prunefx.runtime.tables.timers import OnnxRuntimeLayerTimer

NAME = "table_timing"
# (entries side by side in one model, sweeps); "together, 1 reading" is prunefx's
KINDS = {"alone, 1 reading": (False, 1), "alone, 3 sweeps": (False, 3), "together, 1 reading": (True, 1),
         "together, 3 sweeps": (True, 3)}
SHORT = {"alone": "alone, 1 reading", "alone-3": "alone, 3 sweeps", "together": "together, 1 reading",
         "together-3": "together, 3 sweeps"}  # --kinds
APART = 0.10    # an entry this far from its twin in another build counts as apart


class OneAtATime(OnnxRuntimeLayerTimer):
    """The timer as it was: each entry alone, in a session of its own."""

    time_all = None


def build(dense: Program, kind: str, args) -> tuple[LatencyTable, float]:
    """A table of every timed layer, timed afresh (a cache folder of its own); its build seconds."""
    together, sweeps = KINDS[kind]
    kind_of_timer = OnnxRuntimeLayerTimer if together else OneAtATime
    timer = kind_of_timer(threads=args.threads, warmup=3, runs=10, sweeps=sweeps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        table = build_latency_table(timed_layers(dense.module), timer, multiple=args.round_to, batch=1,
                                    cache_dir=folder)
    return table, time.perf_counter() - started


def entries(table: LatencyTable) -> np.ndarray:
    return np.concatenate([np.asarray(table.grids[name].ms, dtype=float).ravel() for name in sorted(table.grids)])


def agreement(tables: list[LatencyTable]) -> dict:
    """Entry by entry, every two builds: the ratios over the pair's median ratio, pooled."""
    ratios = []
    for first, second in itertools.combinations(tables, 2):
        ratio = entries(second) / entries(first)
        ratios.append(ratio / np.median(ratio))
    pooled = np.concatenate(ratios)
    return {"pairs": len(ratios), "entries": int(pooled.size // len(ratios)),
            "apart": float(np.mean(np.abs(pooled - 1) > APART)), "p5": float(np.percentile(pooled, 5)),
            "p95": float(np.percentile(pooled, 95)), "lowest": float(pooled.min()), "highest": float(pooled.max())}


def widths(program: Program) -> tuple:
    """The plan, as the shapes of the pruned model's weights."""
    return tuple(tuple(tensor.shape) for tensor in program.module.state_dict().values())


def model_rows(model: str, args) -> dict:
    torch.manual_seed(args.seed)
    dense = capture(build_model(ZOO[model], image_size=224).module.eval(), torch.randn(1, 3, 224, 224),
                    name=model).eval()
    extra = {"importance": "l2", "round_to": args.round_to}
    by_macs = remove_channels(dense.clone(), config={"macs": args.macs, "strict": False, **extra}).program
    target = count(by_macs).macs / count(dense).macs
    tables: dict[str, list[LatencyTable]] = {kind: [] for kind in args.kinds}
    plans, rows = {"macs": by_macs}, []
    for index in range(args.builds):
        for kind in args.kinds:
            table, seconds = build(dense, kind, args)
            tables[kind].append(table)
            program, macs_kept, _ = table_fraction.at_macs(dense, table, target, extra)
            key = f"{kind}, build {index + 1}"
            plans[key] = program
            rows.append({"kind": kind, "build": index + 1, "key": key, "table_s": seconds, "macs_kept": macs_kept,
                         "dense_table_ms": table_fraction.table_ms(table, dense), "plan": widths(program)})
            print(f"{model}: {key}: table {seconds:.1f} s, MACs kept {macs_kept:.3f}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        timed = Timing(dense, args, Path(folder), "dynamo").side_by_side(plans, args.rounds)
    for row in rows:
        row.update(timed[row["key"]])
    plan_ids = {plan: number for number, plan in enumerate(dict.fromkeys(row["plan"] for row in rows), start=1)}
    for row in rows:
        row["plan"] = plan_ids[row.pop("plan")]
    return {"model": model, "macs_choice": {"macs_kept": target, **timed["macs"]}, "choices": rows,
            "entries": {kind: agreement(tables[kind]) for kind in args.kinds}}


def markdown(report: dict) -> str:
    lines = ["# How far a latency table and its choice move between builds, by how its entries are timed",
             "", f"Produced by `{report['command']}`.", "", machine_summary(report["machine"]), "",
             "- Kinds: each layer alone (its weights stay in the caches), or a sweep's entries together in one model "
             "(prunefx's: each entry's weights pushed out by the others'); each entry one reading or the median of 3 "
             "sweeps.",
             f"- Each model: {report['builds']} builds of each kind, alternated, each timed afresh (ONNX Runtime, "
             f"{report['threads']} threads, batch 1, widths of {report['round_to']}). Entries: every two builds of a "
             f"kind, each ratio over the pair's median ratio; apart: more than {APART:.0%} from its twin.",
             f"- Choices: the latency choice at the MACs the MACs choice keeps at {report['macs']}, every plan timed "
             f"against the dense model round by round in one run ({report['rounds']} rounds); plan: the same number "
             "for the same widths; speed-up x MACs kept: the speed-up over the MACs reduction, which compares plans "
             "that landed at slightly different MACs.", ""]
    for result in report["results"]:
        dense_ms = result["macs_choice"]["dense_ms"]
        lines += [f"## {result['model']}", "", markdown_table(
            ["timing", "pairs of builds", "entries", "entries apart", "ratio p5-p95", "farthest",
             "dense sum (measured " + f"{dense_ms:.1f} ms)"],
            [[kind, e["pairs"], e["entries"], f"{e['apart']:.1%}", f"{e['p5']:.3f}-{e['p95']:.3f}",
              f"{e['lowest']:.3f} / {e['highest']:.3f}",
              " / ".join(f"{row['dense_table_ms']:.1f}" for row in result["choices"] if row["kind"] == kind)]
             for kind, e in result["entries"].items()]), ""]
        macs = result["macs_choice"]
        rows = [["MACs choice", "", f"{macs['macs_kept']:.3f}", "", f"**{macs['speedup']:.2f}x**",
                 f"{macs['speedup'] * macs['macs_kept']:.2f}"]]
        rows += [[row["key"], f"{row['table_s']:.1f}", f"{row['macs_kept']:.3f}", row["plan"],
                  f"**{row['speedup']:.2f}x** ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})",
                  f"{row['speedup'] * row['macs_kept']:.2f}"] for row in result["choices"]]
        lines += [markdown_table(["choice", "table s", "MACs kept", "plan", "speed-up (90 % interval)",
                                  "speed-up x MACs kept"], rows), ""]
        for kind in result["entries"]:
            mine = [row for row in result["choices"] if row["kind"] == kind]
            speedups = [row["speedup"] for row in mine]
            lines.append(f"- {kind}: {len({row['plan'] for row in mine})} distinct plans "
                         f"of {len(mine)}, speed-ups {min(speedups):.2f}x to {max(speedups):.2f}x.")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "resnet50", "mobilenet_v2"], choices=list(ZOO))
    parser.add_argument("--builds", type=int, default=4, help="tables of each kind per model")
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100, help="timed runs of each pair over all rounds")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=list(SHORT), choices=list(SHORT),
                        help="the timings compared: alone, alone-3, together, together-3 (all)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--results-name", default=NAME, help=f"the results files' name ({NAME})")
    args = parser.parse_args(argv)
    args.kinds = [SHORT[kind] for kind in args.kinds]
    args.round_to = onnxruntime_multiple()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "builds": args.builds,
              "macs": args.macs, "rounds": args.rounds, "threads": args.threads, "round_to": args.round_to,
              "results": [model_rows(model, args) for model in args.models]}
    json_path, md_path = write_results(args.results_name, report, markdown(report), folder=args.results or RESULTS)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
