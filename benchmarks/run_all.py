"""Rerun the benchmarks behind the published figures, then regenerate the README's tables from their results.

    .venv/bin/python benchmarks/run_all.py            # make bench: the lane that fits about 90 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --all      # make bench-all: every results file, then every other script
    .venv/bin/python benchmarks/run_all.py --dry-run  # the plan: each command and its minutes, the total
    .venv/bin/python benchmarks/run_all.py --only dense_tasks --resume  # finish one interrupted run

What runs, and with which settings, is benchmarks/published.py: one run for each results file, with the
arguments that make it from scratch, its lane and its planned minutes. Each runs with this same interpreter from the repository root, its output
shown as it comes; a failure is reported and the next run goes on (one summary line per run at the end, exit
status 1 if any failed). Everything the benchmarks would resume from (trained baselines, finished runs,
exported files) goes to build/bench/, emptied first: no figure comes from an earlier session's cache.
`--resume` keeps it, to finish an interrupted run (a run of several hours may take more than one session), and
refuses where the library, the benchmark scripts or the pins changed since the folder was emptied
(build_stamp.py): a resumed figure is still one version's. `--only` reruns the published runs it names. A run
that needs a GPU is skipped on a machine without one. The README's headline
tables are then regenerated from the results files (scripts/readme_results.py); the docs' benchmark tables are
made from them by every docs build (`make docs`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import published
from build_stamp import StampMismatch, check_stamp, write_stamp

from prunefx.graph.timing import busy_share, share_text
from prunefx.runtime.measure.machine_load import LoadMeter

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
HELPERS = {"common.py", "published.py", "build_stamp.py"}
# Tools another script or a person runs with its own arguments (the GPU check's re-measurement, Torch-Pruning's
# baseline for one model): not benchmarks with defaults of their own, so `--all` does not run them.
TOOLS = {"remeasure_speedup.py", "torch_pruning_baseline.py"}
README_TABLES = REPO / "scripts" / "readme_results.py"
FRESH_BUILD = REPO / "build" / "bench"  # published.py's arguments name files under it


def benchmark_scripts() -> list[Path]:
    """The scripts that run on their own: not this one, its helpers, the tools, or a module others import (no
    `__main__` block)."""
    return sorted(path for path in BENCHMARKS.glob("*.py")
                  if path.name != Path(__file__).name and path.name not in HELPERS | TOOLS
                  and not path.name.startswith("_") and '__name__ == "__main__"' in path.read_text())


def chosen_runs(everything: bool, only: list[str] | None = None) -> list[published.Run]:
    """The published runs of the lane, or with `only` those of the results files it names, in published.py's order."""
    if only:
        return [run for run in published.RUNS if run.results in only]
    return published.runs("all" if everything else "bench")


def planned(everything: bool, only: list[str] | None = None) -> list[tuple[str, list[str], str | None, str]]:
    """(label, argv after the interpreter, what it needs, its planned minutes) of every run, in order."""
    plan = [(run.results, run.argv(), run.needs, run.estimate) for run in chosen_runs(everything, only)]
    if everything and not only:  # scripts with no published results file, with their defaults
        named = {f"benchmarks/{run.script}.py" for run in published.RUNS}
        plan += [(script.stem, [str(script.relative_to(REPO))], None, "? min") for script in benchmark_scripts()
                 if str(script.relative_to(REPO)) not in named]
    return plan


def plan_text(everything: bool, only: list[str] | None = None) -> str:
    """Each command with its planned minutes, then the total of the published runs' estimates."""
    runs = chosen_runs(everything, only)
    lines = [f"{estimate:>16}  {shlex.join(['.venv/bin/python', *command])}"
             for _, command, _, estimate in planned(everything, only)]
    guessed = sum(1 for run in runs if run.guessed)
    total = sum(run.minutes for run in runs)
    name = "the runs named" if only else "make bench-all" if everything else "make bench"
    lines.append(f"{name}: {len(runs)} published runs, about {total:g} min on 2 cores ({guessed} of the estimates "
                 f"guessed; a run that needs a GPU is skipped without one)")
    return "\n".join(lines)


def has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def run(label: str, argv: list[str]) -> str:
    print(f"=== {label}: {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    environment = {**os.environ, "PRUNEFX_BENCH_BUILD": str(FRESH_BUILD)}
    with LoadMeter() as meter:  # the run is a child waited for: its own work is not counted as others'
        code = subprocess.run([sys.executable, *argv], cwd=REPO, env=environment).returncode
    seconds = time.perf_counter() - start
    return (f"{'ok' if code == 0 else 'FAILED':<7} {label:<42} {seconds:7.0f} s" + (f"  (exit status {code})" if code else "")
            + busy_note(meter.share))


def busy_note(share: float | None) -> str:
    """'  (busy: other processes took 23 % of the cores)' for a run beside other work (graph/timing.py's busy_share)."""
    return f"  (busy: {share_text(share)})" if busy_share(share) else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every results file and every other benchmark script")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (commands, minutes), run nothing")
    parser.add_argument("--resume", action="store_true",
                        help="keep build/bench/ from before, if the same code filled it")
    parser.add_argument("--only", nargs="+", metavar="RESULTS", choices=[run.results for run in published.RUNS],
                        help="only the published runs of these results files (benchmarks/results/RESULTS.json)")
    args = parser.parse_args(argv)
    plan = planned(args.all, args.only)
    if args.dry_run:
        print(plan_text(args.all, args.only))
        return 0
    if args.resume:
        try:
            check_stamp(FRESH_BUILD)
        except StampMismatch as error:
            print(f"run_all.py: {error}", file=sys.stderr)
            return 2
    else:
        shutil.rmtree(FRESH_BUILD, ignore_errors=True)
        write_stamp(FRESH_BUILD)
    gpu = has_gpu()
    summary = []
    for label, command, needs, _ in plan:
        if needs == "gpu" and not gpu:
            summary.append(f"{'skipped':<7} {label:<42} (needs a GPU)")
            continue
        summary.append(run(label, command))
    summary.append(run("README tables", [str(README_TABLES.relative_to(REPO)), "--write"]))
    print(f"\n{len(plan)} run(s):")
    print("\n".join(summary))
    return 1 if any(line.startswith("FAILED") for line in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
