"""latency_budget: `prunefx prune MODEL --speedup S` lands where it says, measured by someone else.

For each model (CNNs, ConvNeXt-style and ViTs; none named by our tests) and each budget S, the real command
line runs in its own process:

    python -m prunefx prune MODEL --input-shape 1x3xNxN --speedup S --threads T --importance l2
        --no-compensate --no-recalibrate --allow-depth --calibrate imagenet-sample

(ONNX Runtime, batch 1, T threads; widths rounded to the backend's multiple; width first, depth when width
alone cannot reach S, both together when depth alone cannot either). Then separate processes time the result
independently of the search (200 runs after 20 warm-up, over 4 processes: longer than the search's confirmation):
`prunefx bench dense.onnx --vs model.onnx` and, as a control, `prunefx bench dense.onnx --vs control.onnx`
(a byte copy of the dense file: it must read 1.00x, and its interval shows how far this machine's noise
reaches). Target: every budget lands within [0.95 S, 1.25 S] on the independent check or is refused in one
line with the best intervals, and at least 90 % land; the search under 3 minutes for a ResNet-50-sized model.
Runs split over several sessions (some of the models, or a rerun of one) become one results file with --merge.

    .venv/bin/python benchmarks/latency_budget.py [--models ...] [--budgets 2 3] [--input-size 224]
        [--results-name latency_budget] [--note "what else ran"]
    .venv/bin/python benchmarks/latency_budget.py --merge PART1 PART2 [--results-name latency_budget]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import BUILD, RESULTS, command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.runtime.measure.speedup import CONFIRM_ROUNDS
from prunefx.runtime.ort.runners import timing_flushes_denormals

NAME = "latency_budget"
MODELS = ("torchvision:resnext50_32x4d", "torchvision:mobilenet_v3_large", "torchvision:regnet_y_1_6gf",
          "torchvision:efficientnet_b1", "timm:convnextv2_atto", "timm:convnext_atto",
          "timm:deit_small_patch16_224", "timm:vit_tiny_patch16_224")
WORK = BUILD / NAME
SEARCH_FLAGS = ("--importance", "l2", "--no-compensate", "--no-recalibrate", "--allow-depth", "--calibrate",
                "imagenet-sample", "--calibration-images", "16")
BENCH_ROUNDS = 4  # `bench --vs` spreads its runs over this many fresh processes (its default, stated)
BENCH_WARMUP = 20  # as the search's confirmation: the check is at least as long as what it checks


class CommandFailed(Exception):
    """The command line ended with an error: its one line is the result of that run."""


def cli(*arguments: str, threads: int) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "prunefx", *arguments], env=environment, capture_output=True,
                          text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise CommandFailed(f"exit {done.returncode}: {lines[-1] if lines else 'no message'}")
    return done.stdout


def dense_files(model: str, folder: Path, shape: str, threads: int) -> tuple[Path, Path]:
    """dense.onnx and control.onnx, a byte copy timed against it as the control pair."""
    dense, control = folder / "dense.onnx", folder / "control.onnx"
    if not dense.is_file():
        cli("export", model, "--input-shape", shape, "-o", str(dense), threads=threads)
    shutil.copyfile(dense, control)
    return dense, control


def independent(dense: Path, other: Path, args) -> dict:
    """`prunefx bench dense --vs other` in its own process: speed-up and its 90 % interval."""
    bench = json.loads(cli("bench", str(dense), "--vs", str(other), "--threads", str(args.threads), "--runs",
                           str(args.runs), "--rounds", str(BENCH_ROUNDS), "--warmup", str(BENCH_WARMUP), "--json",
                           threads=args.threads))
    return {"speedup": bench["speedup"], "low": bench.get("speedup_low"), "high": bench.get("speedup_high")}


def _ratio_text(row: dict) -> str:
    interval = f" [{row['low']:.2f}, {row['high']:.2f}]" if row.get("low") is not None else ""
    return f"{row['speedup']:.2f}x{interval}"


def _search_text(budget: dict) -> str:
    interval = budget.get("interval") or {}
    bound = f" (bound {interval['low']:.2f})" if interval.get("method") not in (None, "point") else ""
    return f"{budget['speedup']:.2f}x{bound}"


def one_budget(model: str, budget: float, folder: Path, dense: Path, control: Path, args) -> tuple[dict, list]:
    output = folder / f"speedup{budget:g}"
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    try:
        cli("prune", model, "--input-shape", args.shape, "--speedup", f"{budget:g}", "--threads", str(args.threads),
            *SEARCH_FLAGS, "-o", str(output), threads=args.threads)
    except CommandFailed as failure:
        seconds = time.perf_counter() - started
        row = [model, f"{budget:g}x", "-", "-", "-", "-", "-", f"refused: {failure}", f"{seconds:.0f}"]
        return {"model": model, "budget": budget, "refused": str(failure), "search_seconds": seconds}, row
    seconds = time.perf_counter() - started
    report = json.loads((output / "report.json").read_text())
    taken = report.get("route") or {}  # with the refusals that led there (width's, depth's), kept in the JSON
    route = taken.get("taken", "width")
    checked, controlled = independent(dense, output / "model.onnx", args), independent(dense, control, args)
    within = 0.95 * budget <= checked["speedup"] <= 1.25 * budget
    run = {"model": model, "budget": budget, "route": route, "search_seconds": seconds,
           "macs_kept": report["macs_after"] / report["macs_before"], "search": report["budget"],
           "independent": checked, "control": controlled, "within_target": within,
           "refusals": {way: part["refusal"] for way, part in taken.items() if isinstance(part, dict) and "refusal" in part}}
    return run, row_of(run)


def row_of(run: dict) -> list:
    """The Markdown row of one budget's run (as recorded in the JSON)."""
    head = [run["model"], f"{run['budget']:g}x"]
    if "refused" in run:
        return [*head, "-", "-", "-", "-", "-", f"refused: {run['refused']}", f"{run['search_seconds']:.0f}"]
    return [*head, run["route"], f"{run['macs_kept']:.3f}", _search_text(run["search"]),
            f"**{_ratio_text(run['independent'])}**", _ratio_text(run["control"]),
            "yes" if run["within_target"] else "**no**", f"{run['search_seconds']:.0f}"]


def top_snapshot() -> str:
    """`top -bn1 | head -15`: what else ran on the machine (the brief asks for it at the start and the end)."""
    done = subprocess.run(["top", "-bn1"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    return "\n".join(done.stdout.splitlines()[:15])


def priority() -> str:
    """This process's scheduling group: with autogroup scheduling (Linux), another terminal's `nice -n 19`
    only ranks processes inside its own group, so a timing run raises its group's weight instead
    (`echo -20 > /proc/self/autogroup` after setsid) to see a nearly quiet machine."""
    try:
        return Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return "no autogroup"


def _summary(runs: list) -> str:
    landed = sum(bool(run.get("within_target")) for run in runs)
    refused = sum("refused" in run for run in runs)
    missed = len(runs) - landed - refused
    return (f"**{landed} of {len(runs)} budgets landed within [0.95 S, 1.25 S] on the independent check**, "
            f"{refused} refused in one line, {missed} missed.")


def _write(args, runs: list, rows: list, load_at_start, top_at_start: str) -> None:
    """The results so far, written after every row (a run stopped part-way keeps what it measured)."""
    top_now = top_snapshot()
    info = {**machine_info(threads=args.threads), "load_average_at_start": list(load_at_start),
            "load_average_at_end": list(os.getloadavg()), "scheduling_group": priority(),
            "top_at_start": top_at_start, "top_at_end": top_now, "confirm_rounds": CONFIRM_ROUNDS,
            "bench_rounds": BENCH_ROUNDS, "bench_runs": args.runs, "bench_warmup": BENCH_WARMUP,
            "rounds_in": "fresh processes",
            "denormals": "flushed" if timing_flushes_denormals() else "kept"}
    write_results(args.results_name, {"command": command_line(), "note": args.note, "machine": info, "runs": runs},
                  "\n".join([
        "# Latency budgets: `prunefx prune --speedup S`, checked by an independent process with a control pair", "",
        f"Produced by `{command_line()}`.", "", machine_summary(info), "",
        *([f"**{args.note}**", ""] if args.note else []),
        f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in load_at_start)}, at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        f"- ONNX Runtime, batch 1, {args.threads} threads, input {args.shape}; widths on the backend's multiple; l2 "
        "importance, no fine-tuning (speed, not accuracy); width first, depth (--allow-depth, blocks ranked on the "
        "20 offline ImageNet images) when width alone cannot reach S, both together (width+depth) when depth alone "
        "cannot either.",
        "- 'search' is the confirmed speed-up the search accepted and the lower bound of its 90 % interval, "
        f"drawn by {_interval_methods(runs)}; 'independent' is `prunefx bench "
        f"dense.onnx --vs model.onnx` in another process ({args.runs} runs each after {BENCH_WARMUP} warm-up runs, "
        f"over {BENCH_ROUNDS} fresh processes, alternating) with its interval; 'control' is dense.onnx against a byte copy of itself, the same way. "
        f"Subnormal floats {info['denormals']} in every timing session (search and bench).",
        "", _summary(runs), "",
        markdown_table(["model", "budget S", "route", "MACs kept", "search (bound)", "independent", "control",
                        "within target", "search seconds"], rows), "",
        f"Scheduling group of the timing process: `{info['scheduling_group']}`.", "",
        "`top -bn1 | head -15` at the start:", "", "```", top_at_start, "```", "",
        "and at the end (the last row written):", "", "```", top_now, "```", ""]))


def _latest_runs(parts: dict) -> tuple[list[dict], list[dict]]:
    """Every part's budgets in order, a later part's row for the same model and budget (a rerun) replacing an
    earlier one in place; the replaced rows are returned too, kept in the JSON beside the table."""
    latest: dict[tuple, dict] = {}
    superseded = []
    for part in parts.values():
        for run in part["runs"]:
            key = (run["model"], run["budget"])
            if key in latest:
                superseded.append(latest[key])
            latest[key] = run
    return list(latest.values()), superseded


def _interval_methods(runs: list) -> str:
    """How the searches' intervals were drawn, as their records say (the runtime names its method in each)."""
    methods = sorted({run["search"]["interval"]["method"] for run in runs
                      if ((run.get("search") or {}).get("interval") or {}).get("method")})
    return ", ".join(methods) or "no interval recorded"


def _measured_how(machine: dict, runs: list) -> str:
    """How the merged runs measured, as the latest part's machine record states it."""
    rounds = machine["rounds_in"]
    return ("- 'search' is the confirmed speed-up the search accepted and the lower bound of its 90 % interval, "
            f"drawn by {_interval_methods(runs)}; 'independent' is `prunefx "
            f"bench dense.onnx --vs model.onnx` in another process ({machine['bench_runs']} runs each after "
            f"{machine['bench_warmup']} warm-up runs, over {machine['bench_rounds']} {rounds}, alternating) with "
            "its 90 % interval; 'control' is dense.onnx against a byte copy of itself, the same way. "
            f"Subnormal floats in the timing sessions: {machine['denormals']}.")


def merge(names: list[str], results_name: str, note: str = "") -> int:
    """One results file from several runs of this script (NAME.json each, kept beside it): their budgets
    together, each part's command, machine, load and scheduling group stated."""
    parts = {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in names}
    runs, superseded = _latest_runs(parts)
    described = []
    for name, part in parts.items():
        machine = part["machine"]
        load = machine.get("load_average_at_start", []), machine["load_average_at_end"]
        described += [f"- `{name}` (`top` at its start and end in {name}.md): `{part['command']}`. "
                      f"{part.get('note', '')} Load average at the start {', '.join(f'{x:.1f}' for x in load[0])}, at the "
                      f"end {', '.join(f'{x:.1f}' for x in load[1])}; scheduling group "
                      f"`{machine.get('scheduling_group', '?')}`."]
    latest = list(parts.values())[-1]["machine"]  # the method of the latest part, whose rows replace earlier ones
    write_results(results_name, {"command": command_line(), "note": note, "superseded_runs": superseded, "parts": {n: {k: p[k] for k in ("command", "note", "machine")}
                                                                      for n, p in parts.items()},
                                 "machine": latest, "runs": runs},
                  "\n".join([
        "# Latency budgets: `prunefx prune --speedup S`, checked by an independent process with a control pair", "",
        f"Merged by `{command_line()}` from these runs:", "", *described, "", *([note, ""] if note else []),
        machine_summary(latest), "",
        "- ONNX Runtime, batch 1, 2 threads; widths on the backend's multiple; l2 importance, no fine-tuning (speed, "
        "not accuracy); width first, then depth (--allow-depth: merged blocks, or dropped residual branches where "
        "no block merges) when width alone cannot reach S.",
        _measured_how(latest, runs), "", _summary(runs), "",
        markdown_table(["model", "budget S", "route", "MACs kept", "search (bound)", "independent", "control",
                        "within target", "search seconds"], [row_of(run) for run in runs]), ""]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[2.0, 3.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200,
                        help="timed runs of the independent measurement (default 200, as the search's confirmation)")
    parser.add_argument("--input-size", type=int, default=224, help="square input side (default 224)")
    parser.add_argument("--results-name", default=NAME, help=f"results file name (default {NAME})")
    parser.add_argument("--note", default="", help="what the reader must know (e.g. other work ran beside it)")
    parser.add_argument("--merge", nargs="+", metavar="NAME", help="write --results-name from these results "
                                                                      "files instead of running anything")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.results_name, args.note)
    args.shape = f"1x3x{args.input_size}x{args.input_size}"
    runs, rows = [], []
    load_at_start, top_at_start = os.getloadavg(), top_snapshot()
    for model in args.models:
        folder = WORK / f"{model.replace(':', '_')}_{args.input_size}"
        folder.mkdir(parents=True, exist_ok=True)
        dense, control = dense_files(model, folder, args.shape, args.threads)
        for budget in args.budgets:
            run, row = one_budget(model, budget, folder, dense, control, args)
            runs.append(run)
            rows.append(row)
            print(row, flush=True)
            _write(args, runs, rows, load_at_start, top_at_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
