"""tool_profile: where the time of a calibrated `prunefx prune` goes, stage by stage.

For each model, `prunefx prune MODEL --macs 0.5 --calibrate imagenet-sample -o DIR` (tool_speed.py's calibrated
case) runs once in its own process under Python's cProfile (OMP_NUM_THREADS=--threads), and the profile is read
for the cumulative time of each stage below; a stage inside another is listed under it, so a parent's time
includes its children's. The profiler adds overhead to Python-heavy code (little to the float64 linear algebra
the second-order choice spends its time in): read the shares, and tool_speed.py's unprofiled wall times.

    .venv/bin/python benchmarks/tool_profile.py [--models resnet50 vit_l16] [--threads 2] [--device cuda]

`--device cuda` profiles the GPU path (`prune --device cuda`, what `make gpu-check` runs): the GPU's work is
asynchronous, so its time lands in the stage that waits for it (the elimination reads its errors every step,
the inverses factor on the spot), close to the stage that asked for it.
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from tool_speed import CASES, MACS, MODELS, last_line

NAME = "tool_profile"
DEFAULT_MODELS = ("resnet50", "vit_l16")


@dataclass(frozen=True)
class Stage:
    """A stage: the function whose cumulative time it is (a path ending and a name), counted only when called from
    `caller` (same form) where one is given; `depth` 1 is a stage of the command, 2 a part of the stage above."""

    name: str
    path: str
    function: str
    depth: int = 1
    caller: tuple[str, str] | None = None


CHOICE = ("graph/channels/saliency.py", "_compute")
# saliency's _compute resumes the Hessian generator with next(), which cProfile records as its caller; in a prune,
# compensation's reads (a for loop, under the compensation stage) are the only other caller
RESUMED_BY_NEXT = ("~", "<built-in method builtins.next>")
STAGES = (
    Stage("capture (torch.export)", "prunefx/cli/commands/prune.py", "_program"),
    Stage("channel choice (obs)", *CHOICE),
    Stage("Hessians: forward passes and X^T X", "graph/layer_hessians.py", "iter_hessians", 2, RESUMED_BY_NEXT),
    Stage("damped inverses", "graph/channels/compensation.py", "lean_damped_inverse", 2),
    Stage("output energies", "graph/channels/compensation.py", "output_energy", 2, CHOICE),
    Stage("elimination", "graph/channels/obs_elimination.py", "eliminate", 2),
    Stage("compensation", "graph/channels/compensation.py", "compensate_removed_inputs"),
    Stage("batch-norm recalibration", "passes/recalibrate_batchnorm.py", "recalibrate_batchnorm"),
    Stage("verification (lint, shapes, re-export)", "graph/verify.py", "verified_outputs"),
    Stage("model.pt2, ONNX export, parity", "prunefx/deliverable.py", "write_model"),
    Stage("ONNX export", "runtime/onnx/export.py", "export_onnx", 2),
    Stage("parity", "runtime/onnx/parity.py", "check_parity", 2),
)


def _matches(key: tuple, path: str, function: str) -> bool:
    filename, _, name = key
    return name == function and Path(filename).as_posix().endswith(path)


def stage_seconds(stats: pstats.Stats, stage: Stage) -> float:
    """The stage's cumulative seconds in `stats` (0 where its function never ran)."""
    total = 0.0
    for key, (_, _, _, cumulative, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not _matches(key, stage.path, stage.function):
            continue
        if stage.caller is None:
            total += cumulative
        else:
            total += sum(entry[3] for caller, entry in callers.items() if _matches(caller, *stage.caller))
    return total


def profile_model(model: str, threads: int, workdir: Path, device: str = "cpu") -> dict:
    reference = MODELS.get(model, model)
    profile, output = workdir / f"{model}.prof", workdir / f"{model}-out"
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "prunefx", "prune", reference,
               *CASES["calibrated"], *(["--device", device] if device != "cpu" else []), "-o", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"model": model, "reference": reference, "error": last_line(done.stderr) or f"exit {done.returncode}"}
    stats = pstats.Stats(str(profile))
    total = stats.total_tt  # type: ignore[attr-defined]
    stages = [{"stage": stage.name, "depth": stage.depth, "seconds": round(stage_seconds(stats, stage), 2)}
              for stage in STAGES]
    return {"model": model, "reference": reference, "wall_s": round(wall, 1), "profiled_s": round(total, 1),
            "stages": stages}


def markdown(report: dict) -> str:
    lines = ["# Where the time of a calibrated `prunefx prune` goes", "",
             f"Produced by `{report['command']}`.", "",
             f"- Machine: {machine_summary(report['machine'])}.",
             f"- Each model: `prunefx prune MODEL {' '.join(CASES['calibrated'])}"
             f"{' --device ' + report['device'] if report.get('device', 'cpu') != 'cpu' else ''} -o DIR` under cProfile,"
             f" OMP_NUM_THREADS={report['threads']}; seconds are cumulative (a part's seconds are inside its"
             " stage's); the profiler slows Python-heavy code more than the linear algebra, so read shares.", ""]
    for row in report["rows"]:
        lines.append(f"## {row['model']} (`{row['reference']}`)")
        lines.append("")
        if "error" in row:
            lines += [f"Failed: {row['error']}", ""]
            continue
        total = row["wall_s"]  # the process from start to exit: cumulative times can add up past the profile's own total
        table = [[("- " if stage["depth"] == 2 else "") + stage["stage"], f"{stage['seconds']:.1f}",
                  f"{stage['seconds'] / total:.0%}"] for stage in row["stages"]]
        table.append(["the whole process under the profiler, start to exit", f"{total:.1f}", "100%"])
        lines += [markdown_table(["stage", "seconds", "share"], table), ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"tool_speed's names ({', '.join(MODELS)}) or model references")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (2)")
    parser.add_argument("--device", default="cpu", help="prune --device: where the math runs (cpu, cuda)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the results go (benchmarks/results)")
    parser.add_argument("--results-name", default=NAME, help=f"the results files' name ({NAME})")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if sys.version_info >= (3, 12):  # cProfile moved onto sys.monitoring, whose events torch.export's frames escape
        print("tool_profile: on Python 3.12 and later cProfile misses the functions torch.export runs (its stages "
              "read 0 s); read report.json's `seconds` (tool_speed.py's stage_seconds) instead", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="prunefx-tool-profile-") as tmp:
        rows = [profile_model(model, args.threads, Path(tmp), args.device) for model in args.models]
    report = {"benchmark": NAME, "command": command_line(), "machine": machine_info(), "threads": args.threads,
              "device": args.device, "macs": MACS, "rows": rows}
    return publish_results(args.results_name, report, markdown(report), folder=args.output_dir or RESULTS)


if __name__ == "__main__":
    sys.exit(main())
