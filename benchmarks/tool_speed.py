"""tool_speed: how long `prunefx prune` takes and how much memory it needs, as a user runs it.

For each model (at its default input, 224 px for the models below, with the random weights `prunefx prune`
builds without --weights), each case runs as its own process, timed from its start to its exit:
- uncalibrated: `prunefx prune MODEL --macs 0.5 -o DIR` (l2 importance, no data);
- calibrated:   `prunefx prune MODEL --macs 0.5 --calibrate imagenet-sample -o DIR` (the recommended
  path: obs channel choice, compensation and batch-norm recalibration on the 20 offline images);
- speedup:      `prunefx prune MODEL --speedup 2 -o DIR` (a budget search measured on ONNX Runtime CPU,
  prunefx's default backend and threads);
- torch-pruning: benchmarks/torch_pruning_baseline.py, Torch-Pruning's MagnitudeImportance pruning the
  same model to the same MACs fraction (ratio found by bisection on its own MAC counter; no calibration,
  no export, no parity check).
By default every case of ResNet-50, ConvNeXt-T, ViT-B/16 and ViT-L/16, and the uncalibrated case of ViT-g/14
(about 1 B parameters: the memory target's model), each run --repeat times (3), round by round: every case
once per round, so a machine that slows down slows every case alike. Wall time is the median of a case's
runs, peak memory their largest.
Every prunefx figure includes process start, model building, capture, pruning, ONNX export and the
parity check. Peak memory is the peak resident set of the process (os.wait4's ru_maxrss: the largest of
the process and the processes it waited for), shown against the model's parameters in float32.

A case that fails is a row with its one-line error, and is not run again; one that runs past --timeout is
killed and reported as timed out. Writes benchmarks/results/tool_speed.json and .md (or under --output-dir).

    .venv/bin/python benchmarks/tool_speed.py [--models resnet50 ...] [--cases calibrated ...] [--repeat 3]
    .venv/bin/python benchmarks/tool_speed.py --models prunefx:resnet20 --cases uncalibrated --output-dir build/x
    .venv/bin/python benchmarks/tool_speed.py --pair vit_l16 calibrated --pair resnet50 calibrated --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, write_results

from prunefx.graph.counted import counted

NAME = "tool_speed"
MODELS = {
    "resnet50": "torchvision:resnet50",
    "convnext_tiny": "torchvision:convnext_tiny",
    "vit_b16": "timm:vit_base_patch16_224",
    "vit_l16": "timm:vit_large_patch16_224",
    "vit_g14": "timm:vit_giant_patch14_224",
}
# The ~1 B-parameter model runs its uncalibrated case only: the memory target is stated for it, and its
# other cases would run past any timeout that suits the others.
ONLY_CASES = {"vit_g14": ("uncalibrated",)}
MACS = 0.5
SPEEDUP = 2.0
CASES = {  # case -> the prunefx options besides the model and -o; None: Torch-Pruning's script
    "uncalibrated": ["--macs", f"{MACS:g}"],
    "calibrated": ["--macs", f"{MACS:g}", "--calibrate", "imagenet-sample"],
    "speedup": ["--speedup", f"{SPEEDUP:g}"],
    "torch-pruning": None,
}
TORCH_PRUNING_SCRIPT = Path(__file__).resolve().with_name("torch_pruning_baseline.py")
LAUNCHER = Path(__file__).resolve().with_name("_measure_process.py")
BYTES_PER_PARAM = 4  # float32, the dtype every model here is built in


@dataclass
class Measured:
    """One child process: how it ended, its wall time and peak resident memory, and its last words."""
    status: str  # "ok", "failed" or "timed out"
    wall_s: float
    peak_rss_mb: float
    error: str | None
    stdout: str


def run_measured(command: list[str], *, timeout: float, env: dict | None = None) -> Measured:
    """Run `command` through the small launcher (see its docstring for why); past `timeout` s it is killed
    with everything it started."""
    with tempfile.TemporaryDirectory(prefix="tool-speed-") as tmp:
        folder = Path(tmp)
        result = folder / "measured.json"
        with open(folder / "out", "w+") as out, open(folder / "err", "w+") as err:
            # -S: no site packages, so the launcher stays a few MB.
            subprocess.run([sys.executable, "-S", str(LAUNCHER), str(result), str(timeout), *command],
                           stdout=out, stderr=err, env=env, check=False)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if not result.is_file():  # the command could not even start (the launcher says why)
            return Measured("failed", 0.0, 0.0, last_line(stderr) or "the launcher failed", stdout)
        found = json.loads(result.read_text())
    wall, peak, code = found["wall_s"], found["peak_rss_kib"] * 1024 / 1e6, found["exit_code"]
    if found["timed_out"]:
        return Measured("timed out", wall, peak, f"timed out after {timeout:g} s", stdout)
    if code != 0:
        return Measured("failed", wall, peak, last_line(stderr) or f"exit status {code}", stdout)
    return Measured("ok", wall, peak, None, stdout)


def last_line(text: str) -> str:
    """The last non-empty line: a CLI's one-line error, or the exception line of a traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def prunefx_command() -> list[str]:
    """The `prunefx` entry point beside this interpreter (what a user types), else `python -m prunefx`."""
    script = Path(sys.executable).with_name("prunefx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "prunefx"]


def case_command(case: str, reference: str, output: Path, device: str | None) -> list[str]:
    device_options = ["--device", device] if device else []
    options = CASES[case]
    if options is None:
        return [sys.executable, str(TORCH_PRUNING_SCRIPT), reference, "--macs", f"{MACS:g}", *device_options]
    return [*prunefx_command(), "prune", reference, *options, *device_options, "-o", str(output)]


def shown(command: list[str], output: Path) -> str:
    """The command as a user would type it: `prunefx ...` or `python benchmarks/...`, the output as DIR."""
    names = {sys.executable: "python", str(Path(sys.executable).with_name("prunefx")): "prunefx",
             str(TORCH_PRUNING_SCRIPT): f"benchmarks/{TORCH_PRUNING_SCRIPT.name}", str(output): "DIR"}
    return shlex.join(names.get(word, word) for word in command)


def case_details(case: str, measured: Measured, output: Path) -> dict:
    """What the run itself says: parameters, MACs kept, parity or the budget met (from report.json or the
    Torch-Pruning script's JSON line)."""
    if measured.status != "ok":
        return {}
    if CASES[case] is None:
        found = json.loads(measured.stdout.strip().splitlines()[-1])
        return {"params": found["params"], "macs_kept": found["macs_kept"], "torch_pruning": found}
    report = json.loads((output / "report.json").read_text())
    details = {"params": report["params_before"], "macs_kept": report["macs_after"] / report["macs_before"],
               "parity_relative": (report.get("parity") or {}).get("relative"),
               "stage_seconds": report.get("seconds")}  # where the command's own clock saw the time go
    budget = report.get("budget") or {}
    if budget:
        details.update(speedup=budget.get("speedup"), candidates=len(budget.get("trace") or []),
                       search=[search_step(row) for row in budget.get("trace") or []])
    return details


def search_step(row: dict) -> dict:
    """One candidate of a budget search as its report's trace has it, cut to what explains the search's length:
    its reading, and its confirmation where it had one (whether measured longer)."""
    step = {"macs_kept": row["macs_kept"], "reading": (row.get("first") or row)["speedup"]}
    if row.get("confirmed"):
        interval = row.get("interval") or {}
        step.update(confirmed=row["speedup"], low=interval.get("low"), longer=bool(row.get("longer")))
    return step


def default_pairs(models: list[str], cases: list[str]) -> list[tuple[str, str]]:
    """Every case of every model, but for the models that run only some cases (ONLY_CASES)."""
    return [(model, case) for model in models for case in cases if case in ONLY_CASES.get(model, CASES)]


def invocation(model: str, case: str, args: argparse.Namespace, workdir: Path) -> tuple[list[str], Path]:
    """A case's command line and the folder it writes to."""
    output = workdir / f"{model.replace(':', '_')}-{case}"
    return case_command(case, MODELS.get(model, model), output, args.device), output


def run_once(model: str, case: str, args: argparse.Namespace, workdir: Path) -> tuple[Measured, dict]:
    """One run of a case: how it ended, and what it says it did (see case_details)."""
    command, output = invocation(model, case, args, workdir)
    measured = run_measured(command, timeout=args.timeout, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    try:
        details = case_details(case, measured, output)
    except (OSError, ValueError, KeyError, IndexError) as error:  # ran, but left no readable account
        measured.status, measured.error, details = "failed", f"{type(error).__name__}: {error}"[:300], {}
    shutil.rmtree(output, ignore_errors=True)  # a large model's model.pt2 and model.onnx weigh gigabytes
    print(f"[{model}] {case}: {measured.status}, {measured.wall_s:.1f} s, {measured.peak_rss_mb:.0f} MB",
          file=sys.stderr, flush=True)
    return measured, details


def run_rounds(pairs: list[tuple[str, str]], args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Every pair once per round, `args.repeat` rounds (this machine's wall times move by 10 % from run to run,
    and a slower hour must not fall on one case only); a pair that fails or times out is not run again."""
    runs: dict[tuple[str, str], list[tuple[Measured, dict]]] = {pair: [] for pair in pairs}
    for round_number in range(1, args.repeat + 1):
        print(f"round {round_number} of {args.repeat}", file=sys.stderr, flush=True)
        for pair in pairs:
            if all(measured.status == "ok" for measured, _ in runs[pair]):
                runs[pair].append(run_once(*pair, args, workdir))
    return [case_row(*pair, found, args, workdir) for pair, found in runs.items()]


def case_row(model: str, case: str, found: list[tuple[Measured, dict]], args: argparse.Namespace,
             workdir: Path) -> dict:
    """A case's row: the median wall time of its runs and their largest peak; a failure or timeout is the row."""
    measured, details = found[-1] if found[-1][0].status != "ok" else found[0]
    walls = [run.wall_s for run, _ in found]
    return {"model": model, "reference": MODELS.get(model, model), "case": case,
            "command": shown(*invocation(model, case, args, workdir)),
            **{k: v for k, v in asdict(measured).items() if k != "stdout"}, **details,
            "wall_s": walls[-1] if measured.status != "ok" else statistics.median(walls), "wall_runs_s": walls,
            "peak_rss_mb": max(run.peak_rss_mb for run, _ in found)}


def with_model_memory(rows: list[dict]) -> list[dict]:
    """Each row gets its model's parameter memory (from any case that counted the parameters) and its
    peak as a multiple of it."""
    params: dict[str, int] = {}
    for row in rows:
        if row.get("params"):
            params.setdefault(row["model"], row["params"])
    for row in rows:
        count = params.get(row["model"])
        row["model_mb"] = count * BYTES_PER_PARAM / 1e6 if count else None
        row["peak_per_model"] = row["peak_rss_mb"] / row["model_mb"] if count else None
    return rows


# --- report ----------------------------------------------------------------------------------------

def _cell(value: float | None, form: str) -> str:
    return "" if value is None else format(value, form)


def _note(row: dict) -> str:
    if row["status"] != "ok":
        return f"**{row['status']}**: {row['error']}"
    runs = row.get("wall_runs_s") or []
    spread = f"median of {len(runs)} runs ({min(runs):.1f}-{max(runs):.1f} s); " if len(runs) > 1 else ""
    return spread + _what_it_did(row)


def _what_it_did(row: dict) -> str:
    if row["case"] == "torch-pruning":
        found = row["torch_pruning"]
        return (f"{len(found['tries'])} tries in {found['search_seconds']:.1f} s, one prune "
                f"{found['one_prune_seconds']:.2f} s; no export, no parity")
    if row.get("speedup") is not None:
        steps = "; ".join(_step_text(step) for step in row.get("search") or [])
        return f"measured {row['speedup']:.2f}x after {counted(row['candidates'], 'candidate')}" + \
            (f" ({steps})" if steps else "")
    parity = row.get("parity_relative")
    return "" if parity is None else f"parity {parity:.1e}"


def _step_text(step: dict) -> str:
    """'read 2.10x' or 'read 2.24x, confirmed 2.20x (longer)'."""
    text = f"read {step['reading']:.2f}x"
    if "confirmed" in step:
        text += f", confirmed {step['confirmed']:.2f}x" + (" (longer)" if step["longer"] else "")
    return text


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[row["model"], row["case"], _cell(row["wall_s"], ".1f"), _cell(row["peak_rss_mb"], ".0f"),
             _cell(row["model_mb"], ".0f"), _cell(row["peak_per_model"], ".1f"),
             _cell(row.get("macs_kept"), ".3f"), _note(row)] for row in rows]


def markdown(report: dict) -> str:
    settings = report["settings"]
    table = markdown_table(["model", "case", "wall s", "peak RSS MB", "model MB", "x model", "MACs kept", "note"],
                           table_rows(report["rows"]))
    device = f"`--device {settings['device']}`" if settings["device"] else "no `--device` (prunefx's default)"
    return f"""# Time and memory of `prunefx prune`, and of Torch-Pruning

Produced by `{report['command']}` on {report['machine']['date_utc']} UTC.

- Machine: {machine_summary(report['machine'])}; Torch-Pruning {report['torch_pruning_version']}.
- Every case is its own process (OMP_NUM_THREADS={settings['omp_threads']}, {device}), timed from its start
  to its exit: model building, capture, pruning, ONNX export and parity for prunefx; building and
  pruning for Torch-Pruning, which exports nothing and checks nothing. Peak RSS: the process's peak
  resident memory; model MB: its parameters in float32; x model: their ratio.{_repeats(settings.get('repeat', 1))}
- Cases: uncalibrated `--macs {MACS}`; calibrated `--macs {MACS} --calibrate imagenet-sample`; speedup
  `--speedup {SPEEDUP:g}` (ONNX Runtime CPU, prunefx's default threads); torch-pruning: MagnitudeImportance,
  uniform ratio found by bisection on its own MAC counter (attention matmuls not counted).
- A case that failed or ran past {settings['timeout_s']:g} s is a row with its error.

{table}
"""


def _repeats(repeat: int) -> str:
    return "" if repeat == 1 else (f"\n- Each case ran {repeat} times, round by round (every case once per round): "
                                   "wall s is the median, peak RSS the largest.")


# --- main ------------------------------------------------------------------------------------------

def _torch_pruning_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return None


def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL",
                        help=f"{', '.join(MODELS)} or any prunefx model reference (default: all of them; "
                             f"{', '.join(ONLY_CASES)} only in {', '.join(sorted({c for cs in ONLY_CASES.values() for c in cs}))})")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, metavar="CASE",
                        help=f"cases to run (default: {' '.join(CASES)})")
    parser.add_argument("--threads", type=int, default=cores,
                        help=f"OMP_NUM_THREADS of every case (default: this machine's usable CPUs, {cores})")
    parser.add_argument("--device", default=None,
                        help="passed as --device to every case (default: not passed, each tool's default)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one case may run before it is killed and reported as timed out (1800)")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("MODEL", "CASE"),
                        help="run this model's case (repeatable); instead of every model with every case")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds, each running every case once: a case's wall time is the median of its runs, "
                             "its memory their largest (3)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    parser.add_argument("--results-name", default=NAME,
                        help=f"the results files' name (default {NAME}; another for a separate run, e.g. one model)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.timeout <= 0 or args.repeat < 1:
        parser.error("--threads, --timeout and --repeat must be positive")
    if any(case not in CASES for _, case in args.pair or ()):
        parser.error(f"a --pair's case is one of {', '.join(CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine_info()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prunefx-tool-speed-") as tmp:
        pairs = [tuple(pair) for pair in args.pair] if args.pair else default_pairs(args.models, args.cases)
        rows += run_rounds(pairs, args, Path(tmp))
    report = {
        "benchmark": NAME, "command": command_line(), "machine": info,
        "torch_pruning_version": _torch_pruning_version(),
        "settings": {"omp_threads": args.threads, "device": args.device, "timeout_s": args.timeout, "repeat": args.repeat,
                     "macs": MACS, "speedup": SPEEDUP,
                     "cases": {c: CASES[c] for c in ([c for _, c in args.pair] if args.pair else args.cases)}},
        "rows": with_model_memory(rows),
    }
    info["load_average_at_end"] = list(os.getloadavg())
    text = markdown(report)
    json_path, md_path = write_results(args.results_name, report, text, folder=args.output_dir)
    print(text)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
