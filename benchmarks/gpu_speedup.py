"""GPU speed-ups at equal MACs, prunefx against Torch-Pruning, and prunefx's latency budgets on the cuda backend.

    .venv/bin/python benchmarks/gpu_speedup.py [--models REF ...] [--batches 1 8 32] [--precision fp16]
        [--runs 50] [--time-limit 480] [--out FOLDER] [--resume FILE] [--smoke]

For each model (random weights), an equal-MACs row: prunefx's `prune --macs 0.5` defaults (remove_channels
with {"macs": 0.5}) and Torch-Pruning's magnitude pruner at half the MACs, with its default widths and with
round_to=8 (each search in its own process with a timeout, started a model ahead so that it runs beside the GPU
timing of the model before: benchmarks/torch_pruning_baseline.py), each timed against the dense model on the cuda
backend (runtime/backends/cuda.py: fp16, channels_last, CUDA-graph replays timed with CUDA events, dense and
variant alternated; each figure is the backend's confirmation, 4x the runs). A latency row: prunefx's latency
choice at the MACs of its defaults (`--choose-by latency`'s per-layer table timed on the cuda backend at the
row's batch, every entry anew, its cost recorded; benchmarks/table_fraction.py), timed against dense beside the
defaults in the same row. Then prunefx meets `--speedup S --allow-depth`
budgets on the same backend (S = 1.3 at batch 1, 1.5 at batch 32; width first, whole blocks where it falls short) and each chosen model is measured again by
a fresh pair (models prepared anew) and by a separate process with its own timer
(benchmarks/remeasure_speedup.py), which alone is judged against [0.95 S, 1.25 S]. On the first model, prunefx's
defaults are also timed with channel counts in multiples of 8, 16, 32 and 64 (which a GPU's kernels prefer,
measured), with the batch norms folded into the convolutions of both models (what a fusing runtime runs), and
with both compiled by inductor (`--compile`: the elementwise work fused, which eager mode runs kernel by kernel).

The rows run in the order the figures matter (`plan`; `--missing-first FILE` puts first the rows a published
file lacks or holds no figure of (`rows_held`), one of each kind it lacks altogether before the others): equal MACs at the largest batch on every model, the
latency choice on every model, the budgets, the width multiples, then the other batches. Within `--time-limit` seconds
of the process's start a row starts only while the time left exceeds the longest finished row of its kind, in
this run or in the file `--resume` names (before any of its kind has finished: the longest row of any kind),
each row recording its seconds (and the row that prepares a model's variants what each part took); the rest
is listed as skipped. The results are written
after every row, so a run stopped from outside keeps what it finished, and `--resume FILE` keeps the rows of
an earlier run on the same GPU, software and code (benchmarks/build_stamp.py's digest) and runs the rest. A
row that fails is recorded with its error and the next one runs.

Writes benchmarks/results/gpu_speedup.{json,md} with the GPU's name, driver and torch version. It needs an
NVIDIA GPU; `--smoke` checks the script on a CPU instead: one small model, a CPU stand-in for the device
(perf_counter timing, no graph), results in a temporary folder, never in benchmarks/results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

STARTED = time.monotonic()  # the time limit counts from here: importing torch and prunefx takes seconds of it

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_stamp  # noqa: E402
import equal_macs  # noqa: E402
import table_fraction  # noqa: E402
from common import RESULTS, machine_info, markdown_table  # noqa: E402

import prunefx  # noqa: E402
from prunefx.graph import Program, capture, count  # noqa: E402
from prunefx.graph.errors import PrunefxError  # noqa: E402
from prunefx.graph.whole_files import write_whole  # noqa: E402
from prunefx.loading import model_and_program  # noqa: E402
from prunefx.passes import Pipeline  # noqa: E402
from prunefx.passes.fold_batchnorm import fold_batchnorm  # noqa: E402
from prunefx.passes.remove_channels import remove_channels  # noqa: E402
from prunefx.runtime.backends import Settings  # noqa: E402
from prunefx.runtime.backends.cuda import CudaBackend  # noqa: E402
from prunefx.runtime.cuda.graph import CudaDevice  # noqa: E402
from prunefx.runtime.measure.width_multiple import CUDA_TENSOR_CORE_MULTIPLE  # noqa: E402
from prunefx.runtime.tables.table import program_latency_table  # noqa: E402
from prunefx.runtime.tables.timer_by_name import layer_timer  # noqa: E402

cuda_backend = importlib.import_module("prunefx.runtime.backends.cuda")
MODELS = ("torchvision:resnet101", "torchvision:convnext_small", "torchvision:swin_t", "torchvision:vit_b_16",
          "torchvision:efficientnet_v2_s", "timm:mobilenetv4_conv_medium")
SMOKE_MODEL, SMOKE_BATCHES = "prunefx:resnet20", (1, 4)
BUDGETS = {1: 1.3, 32: 1.5}  # batch -> speed-up asked of `prune --speedup`
MACS = 0.5
ROUND_TO = (8, 16, 32, 64)  # the width multiples a widths row tries: what a GPU's kernels prefer, measured
ROWS = {"equal": "equal_macs", "latency": "latency_choice", "budget": "budgets",
        "widths": "widths"}  # a task's kind -> its report key, in plan order
TORCH_PRUNING_SCRIPT = Path(__file__).resolve().with_name("torch_pruning_baseline.py")
SEARCH_THREADS = 4  # each Torch-Pruning search's threads (mostly Python tracing)


class CpuStandIn(CudaDevice):
    """The device path run on a CPU for --smoke: float32 on the CPU, no graph, perf_counter milliseconds."""

    warm_seconds = 0.0

    def available(self) -> bool:
        return True

    def describe(self) -> dict:
        return {"gpu": "none (CPU stand-in, --smoke)", "torch": torch.__version__, "cuda": None}

    def place(self, module, inputs, dtype):
        return module, tuple(inputs)

    def compile(self, module):
        return module

    def capture(self, run, iterations=1):
        return run

    def time(self, run, calls=1) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        return 1e3 * (time.perf_counter() - start) / calls

    def release(self) -> None:
        pass

    def peak_memory(self) -> None:
        return None


def driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False)
    return answer.stdout.strip().splitlines()[0] if answer.returncode == 0 and answer.stdout.strip() else None


# ---- the variants at equal MACs -----------------------------------------------------------------

class TorchPruningSearch:
    """Torch-Pruning's magnitude pruner at a MACs fraction (benchmarks/torch_pruning_baseline.py), started in a
    child process: its search on a torchvision Swin outgrew 24 GB in minutes, which a timeout and a separate
    process turn into a failed cell. Its pruned module comes back through torch.save. `timeout` counts from the
    start, so that searches started together end together."""

    def __init__(self, reference: str, fraction: float, round_to: int | None, folder: Path, timeout: float):
        self.saved, self.timeout = Path(folder) / f"torch-pruning-{round_to}.pt", timeout
        self.deadline = time.monotonic() + timeout
        self.process = subprocess.Popen(
            [sys.executable, str(TORCH_PRUNING_SCRIPT), reference, "--macs", f"{fraction:.6f}", "--save",
             str(self.saved), *(["--round-to", str(round_to)] if round_to else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, OMP_NUM_THREADS=str(SEARCH_THREADS)))  # two beside the GPU work, not 2x all cores

    def module(self) -> torch.nn.Module:
        try:
            _, errors = self.process.communicate(timeout=max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"Torch-Pruning's search took more than {self.timeout:.0f} s") from None
        if self.process.returncode != 0:
            last = (errors.strip().splitlines() or [f"exit {self.process.returncode}"])[-1]
            raise RuntimeError(f"Torch-Pruning's search was killed (signal {-self.process.returncode}; out of memory?)"
                               if self.process.returncode < 0 else last)
        return torch.load(self.saved, weights_only=False).eval()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class SearchesAhead:
    """Torch-Pruning's two searches (default widths, round_to=8) per model at half the MACs, started when asked
    for, a model ahead of their row: a search is minutes of CPU on a large model, which then run beside the GPU
    timing of the model before. `timeout` counts from each search's start."""

    def __init__(self, folder: Path, timeout: float):
        self.folder, self.timeout, self.count = Path(folder), timeout, 0
        self.started: dict[str, dict[str, TorchPruningSearch]] = {}

    def start(self, reference: str | None) -> None:
        if reference is None or reference in self.started:
            return
        self.count += 1
        folder = self.folder / str(self.count)  # a model's searches again (another batch) save apart
        folder.mkdir(parents=True)
        self.started[reference] = {name: TorchPruningSearch(reference, MACS, round_to, folder, self.timeout)
                                   for name, round_to in (("torch-pruning", None), ("torch-pruning r8", 8))}

    def modules(self, reference: str) -> dict[str, torch.nn.Module | str]:
        """Each search's pruned module, or its error text, once it has ended; its process is gone after."""
        self.start(reference)
        searches = self.started.pop(reference)
        try:
            return {name: _or_error(search.module) for name, search in searches.items()}
        finally:
            for search in searches.values():
                search.stop()

    def drop(self, reference: str) -> None:
        """`reference`'s searches stopped and forgotten: its row failed or will not run."""
        for search in self.started.pop(reference, {}).values():
            search.stop()

    def drop_overdue(self) -> None:
        """Searches past their deadline stopped: none runs on unattended (a Swin search grew past 24 GB)."""
        for reference in [r for r, found in self.started.items()
                          if any(time.monotonic() > search.deadline for search in found.values())]:
            self.drop(reference)

    def stop(self) -> None:
        for reference in list(self.started):
            self.drop(reference)


class ModelVariants:
    """One model's variants, pruned once: dense, prunefx (--macs 0.5 defaults), Torch-Pruning default and
    round_to=8 (an error text in place of a Program where a variant fails). Another batch cuts the captured one
    where the model allows and captures the same pruned modules again where it does not (Swin folds the batch
    into its windows): Torch-Pruning's search, minutes on a Swin, runs once per model. `searches`: where its
    Torch-Pruning modules come from (None: no Torch-Pruning variants); `following`, the model whose searches to
    start now, to run beside this one's GPU timing."""

    def __init__(self, reference: str, batch: int, *, searches: SearchesAhead | None = None,
                 following: str | None = None):
        self.reference = reference
        self.seconds: dict[str, float] = {}  # where a row's time goes, also printed as it goes
        if searches is not None:
            searches.start(reference)  # beside this model's capture, where no model before started it
        clock = time.perf_counter()
        _, dense = model_and_program(reference, input_shape=_shape(reference, batch))
        self.captured_batch = batch
        self.programs = {"dense": dense.eval()}
        self.programs["prunefx"] = _prunefx_defaults(dense)
        self._took("capture and prunefx defaults", clock)
        clock = time.perf_counter()
        self.pruned_modules: dict = {}
        if searches is not None:
            self.pruned_modules = searches.modules(reference)
            searches.start(following)
        self._took("torch-pruning searches, waited for", clock)
        clock = time.perf_counter()
        self.by_batch = {batch: self._assembled(self.programs["dense"], self.programs["prunefx"], batch)}
        self._took("torch-pruning captures", clock)

    def _took(self, part: str, since: float) -> None:
        """Records and prints a part's seconds: a run stopped from outside still says where its time went."""
        self.seconds[part] = time.perf_counter() - since
        print(f"gpu_speedup: {self.reference}: {part}: {self.seconds[part]:.1f} s", flush=True)

    def _assembled(self, dense: Program, prunefx_program: Program, batch: int) -> dict:
        found = {"dense": dense, "prunefx": prunefx_program}
        for name, pruned in self.pruned_modules.items():
            found[name] = pruned if isinstance(pruned, str) else _or_error(
                lambda pruned=pruned, name=name: capture(pruned, dense.example_inputs,
                                                         name=f"{dense.name} {name}").eval())
        return found

    def at(self, batch: int, pair) -> dict:
        """The variants at `batch`, for `pair` (a cuda latency pair at that batch)."""
        if batch not in self.by_batch:
            try:
                pair(self.programs["dense"], self.programs["dense"])  # cuts the captured batch: refuses where it cannot
                self.by_batch[batch] = dict(self.by_batch[self.captured_batch])
            except PrunefxError:
                _, dense = model_and_program(self.reference, input_shape=_shape(self.reference, batch))
                dense = dense.eval()
                self.by_batch[batch] = self._assembled(dense, _prunefx_defaults(dense), batch)
        return self.by_batch[batch]


def _prunefx_defaults(dense: Program) -> Program:
    """`prune --macs 0.5` with the defaults, on a copy of `dense`."""
    return remove_channels(dense.clone(), config={"macs": MACS}).program


def _or_error(make):
    try:
        return make()
    except Exception as error:  # Torch-Pruning raises many types on models it cannot trace, torch.export too
        return _error_text(error)


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]


def _shape(reference: str, batch: int) -> str:
    size = 28 if reference.startswith("prunefx:") else 224
    channels = 1 if reference.startswith("prunefx:") else 3
    return f"{batch}x{channels}x{size}x{size}"


def equal_macs_row(variants: ModelVariants, batch: int, settings: Settings, device) -> dict:
    """Each variant's MACs fraction and confirmed speed-up over dense on the cuda backend at `batch`."""
    pair = CudaBackend(device).latency_pair(dataclasses.replace(settings, batch=batch))
    built = variants.at(batch, pair)
    dense = built["dense"]
    row = {"model": variants.reference, "batch": batch, "notes": list(getattr(pair, "notes", []))}
    if batch == variants.captured_batch:  # the row that built the variants: what each part took
        row["prepare_seconds"] = {part: round(seconds, 1) for part, seconds in variants.seconds.items()}
    for name, program in built.items():
        if name == "dense":
            continue
        if isinstance(program, str):
            row[name] = {"error": program}
            continue
        row[name] = _confirmed_aloud(pair, dense, program, f"{variants.reference} at batch {batch}: {name}")
        row.setdefault("dense_ms", row[name]["dense_ms"])
    return row


def _confirmed_aloud(pair, dense: Program, program: Program, what: str) -> dict:
    """`program` confirmed beside its own run of `dense`, its interval kept and its seconds printed."""
    clock = time.perf_counter()
    timing = pair.confirm(dense, program)
    print(f"gpu_speedup: {what} {timing.speedup:.2f}x, {time.perf_counter() - clock:.1f} s", flush=True)
    return {"ms": timing.ms, "dense_ms": timing.dense_ms, "speedup": timing.speedup, "low": timing.low,
            "high": timing.high, "macs_kept": count(program).macs / count(dense).macs}


# ---- the latency choice ---------------------------------------------------------------------------

def latency_row(reference: str, dense: Program, defaults: Program, batch: int, settings: Settings, device) -> dict:
    """prunefx's latency choice at the MACs its defaults keep, and the defaults, each confirmed against dense in
    this row at `batch` (where the table was timed), with the table's cost: every entry timed anew."""
    kept = count(defaults).macs / count(dense).macs
    timer = layer_timer("cuda", Settings(precision=settings.precision, batch=batch))
    with tempfile.TemporaryDirectory(prefix="gpu-speedup-table-") as cache:
        table = program_latency_table(dense, timer, multiple=CUDA_TENSOR_CORE_MULTIPLE[settings.precision],
                                      batch=batch, cache_dir=cache)
    print(f"gpu_speedup: {reference}: latency table: {table.seconds:.1f} s, {table.measured} entries", flush=True)
    clock = time.perf_counter()
    chosen, _, fraction = table_fraction.at_macs(dense, table, kept, {})
    row = {"model": reference, "batch": batch, "latency_table": {"table_s": table.seconds,
           "table_entries": table.measured, "fraction": fraction, "choice_s": time.perf_counter() - clock,
           # what the table predicts, beside what is measured: whether lone layers price a model's layers
           "predicted_ms": {name: table_fraction.table_ms(table, program)
                            for name, program in (("dense", dense), ("prunefx", defaults), ("prunefx latency", chosen))}}}
    pair = CudaBackend(device).latency_pair(dataclasses.replace(settings, batch=batch))
    for name, program in (("prunefx", defaults), ("prunefx latency", chosen)):
        row[name] = _confirmed_aloud(pair, dense, program, f"{reference} at batch {batch}: {name}")
    row["dense_ms"] = row["prunefx"]["dense_ms"]
    return row


def widths_row(reference: str, batch: int, settings: Settings, device, dense: Program) -> dict:
    """prunefx's defaults at half the MACs with channel counts in multiples of each of ROUND_TO, each confirmed
    against `dense` (the model captured at `batch`): the multiple the cuda backend should keep, measured rather
    than assumed. A multiple too coarse for the model's widths stops short of half (its MACs kept say so)."""
    pair = CudaBackend(device).latency_pair(dataclasses.replace(settings, batch=batch))
    row = {"model": reference, "batch": batch, "round_to": {}}
    for multiple in ROUND_TO:
        program = remove_channels(dense.clone(), config={"macs": MACS, "round_to": multiple, "strict": False}).program
        row["round_to"][str(multiple)] = _confirmed(pair, dense, program)
        if multiple == ROUND_TO[0]:  # batch norms folded into the convolutions, in both: what fused runtimes run
            folded = Pipeline([fold_batchnorm])
            row["folded"] = _confirmed(pair, folded.run(dense).program, folded.run(program).program)
            # both compiled by inductor (`--compile`), which fuses the elementwise work eager mode runs apart
            compiled = CudaBackend(device).latency_pair(dataclasses.replace(settings, batch=batch, compile=True))
            timed = _or_error(functools.partial(_confirmed, compiled, dense, program))
            row["compiled"] = {"error": timed} if isinstance(timed, str) else timed
    return row


def _confirmed(pair, dense: Program, program: Program) -> dict:
    timing = pair.confirm(dense, program)
    return {"speedup": timing.speedup, "ms": timing.ms, "dense_ms": timing.dense_ms,
            "macs_kept": count(program).macs / count(dense).macs}


# ---- budgets --------------------------------------------------------------------------------------

def budget_row(reference: str, batch: int, speedup: float, settings: Settings, device) -> dict:
    """`--speedup S --backend cuda --batch B` through prunefx.meet_budget, re-measured by a fresh pair and,
    judged against [0.95 S, 1.25 S], by a separate process with its own timer."""
    _, dense = model_and_program(reference, input_shape=_shape(reference, batch))
    dense = dense.eval()
    at = dataclasses.replace(settings, batch=batch)
    row = {"model": reference, "batch": batch, "speedup_asked": speedup}
    # --allow-depth: where width buys too little (a GPU at batch 1), whole blocks go. The weights are random, so
    # random images rank the blocks as well as any; the width route keeps its defaults without data (l2, batch
    # norms as they are).
    generator = torch.Generator().manual_seed(0)
    example = dense.example_inputs[0]
    calibration = [(torch.randn(example.shape, generator=generator).to(example),) for _ in range(4)]
    try:
        chosen, outcome = prunefx.meet_budget(dense, speedup=speedup, backend="cuda", precision=at.precision,
                                              batch=batch, measurer=CudaBackend(device).latency_pair(at),
                                              allow_depth=True, calibration=calibration, recalibrate=False,
                                              width={"calibration": None})
    except PrunefxError as error:
        return {**row, "refused": str(error).splitlines()[0]}
    again = CudaBackend(device).latency_pair(at).confirm(dense, chosen)
    independent = independent_speedup(dense, chosen, batch, settings.precision or "fp16")
    judged = independent.get("speedup")  # only the other process's timer can catch a flaw of ours
    choice = "latency" if outcome.search.get("searched") == "layer_time" else "macs"  # the backend's default
    return {**row, "route": outcome.route, **({} if outcome.route == "depth" else {"choice": choice}),
            "search_speedup": getattr(outcome.measured, "speedup", None),
            "remeasured": again.speedup, "independent": independent,
            "macs_kept": count(chosen).macs / count(dense).macs,
            "within": None if judged is None else 0.95 * speedup <= judged <= 1.25 * speedup}


def independent_speedup(dense, chosen, batch: int, precision: str, timeout: float = 300) -> dict:
    """The speed-up measured again by a separate process with its own timer (benchmarks/remeasure_speedup.py),
    or the reason it could not be."""
    with tempfile.TemporaryDirectory(prefix="gpu-speedup-remeasure-") as tmp:
        paths = [str(program.save(Path(tmp) / f"{name}.pt2")) for name, program in (("dense", dense),
                                                                                      ("chosen", chosen))]
        script = Path(__file__).resolve().parent / "remeasure_speedup.py"
        try:
            done = subprocess.run([sys.executable, str(script), *paths, "--batch", str(batch), "--precision",
                                   precision, "--json", str(Path(tmp) / "out.json")], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]}
        return json.loads((Path(tmp) / "out.json").read_text())


# ---- the run --------------------------------------------------------------------------------------

def plan(models: list[str], batches: list[int], budgets: dict[int, float],
         published: frozenset[tuple[str, str, int]] = frozenset()) -> list[tuple[str, str, int]]:
    """(kind, model, batch) in the order the figures matter, so that a run cut short has the first ones: equal
    MACs at the largest batch on every model (prunefx's defaults against Torch-Pruning), the latency choice on
    every model, the budgets (model by model, each at every batch, largest first: a run cut short has both
    batches on its first models), the width multiples on the first model, then the other batches. Given the
    rows a published file holds (`published_rows`), the rows it lacks go first: the first row of each kind it
    holds none of (a run of minutes has a figure of each), then its other missing rows, in that order."""
    first, rest = max(batches), sorted(batches, reverse=True)[1:]
    tasks = ([("equal", model, first) for model in models] + [("latency", model, first) for model in models]
             + [("budget", model, batch) for model in models for batch in sorted(budgets, reverse=True)]
             + [("widths", models[0], first)]
             + [("equal", model, batch) for batch in rest for model in models])
    if not published:
        return tasks
    missing = [task for task in tasks if task not in published]
    held = {kind for kind, _, _ in published}
    leading = [next(task for task in missing if task[0] == kind) for kind in ROWS
               if kind not in held and any(task[0] == kind for task in missing)]
    return leading + [task for task in missing if task not in leading] + [task for task in tasks if task in published]


def published_rows(path: Path | None) -> frozenset[tuple[str, str, int]]:
    """`rows_held` by the results file `path` (none: no file)."""
    if path is None or not path.is_file():
        return frozenset()
    return rows_held(json.loads(path.read_text()))


def rows_held(report: dict) -> frozenset[tuple[str, str, int]]:
    """(kind, model, batch) of each row of `report` that holds its figure: not failed, not a refused budget (newer
    code may meet it: the route that failed is tried again), not a latency choice at other MACs than the
    defaults' (equal_macs.py: no comparison)."""
    return frozenset((kind, row["model"], row["batch"]) for kind, key in ROWS.items() for row in report.get(key, [])
                     if "error" not in row and "refused" not in row and (kind != "latency" or _compared(row)))


def _compared(row: dict) -> bool:
    latency, defaults = row.get("prunefx latency", {}), row.get("prunefx", {})
    return "macs_kept" in latency and "macs_kept" in defaults and equal_macs.at_equal_macs(
        latency["macs_kept"], defaults["macs_kept"])


def run(args) -> dict:
    device = CpuStandIn() if args.smoke else CudaDevice()
    previous, cuda_backend.BACKEND.device = cuda_backend.BACKEND.device, device  # what `--backend cuda` uses
    try:
        return _measure(args, device)
    finally:
        cuda_backend.BACKEND.device = previous


def _measure(args, device) -> dict:
    models = [SMOKE_MODEL] if args.smoke else args.models
    batches = list(SMOKE_BATCHES) if args.smoke else args.batches
    budgets = {min(batches): 1.1} if args.smoke else {b: s for b, s in BUDGETS.items() if b in batches}
    settings = Settings(runs=args.runs, warmup=max(args.runs // 5, 1), precision=args.precision)
    report = {"machine": {**machine_info(precision=args.precision, runs=args.runs, batches=batches),
                          **device.describe(), "driver": driver_version(), "code": args.code,
                          "timing": ("CPU stand-in: float32 eager calls, perf_counter" if args.smoke else
                                     f"{args.precision}, channels_last, cuDNN autotuned, samples of many CUDA-graph "
                                     "replays between CUDA events after a warm-up until settled")},
              **{key: [] for key in ROWS.values()}, "skipped": []}
    kept, hints = resumed(args.resume, report["machine"]), earlier_seconds(args.resume)
    report.update(kept)
    done = {(kind, row["model"], row["batch"]) for kind, key in ROWS.items() for row in kept[key]}
    order = plan(models, batches, budgets, published_rows(args.missing_first))
    tasks = [task for task in order if task not in done]
    with tempfile.TemporaryDirectory(prefix="gpu-speedup-torch-pruning-") as folder:
        searches = SearchesAhead(Path(folder), args.torch_pruning_timeout)
        try:
            return _rows(args, device, tasks, report, hints, searches, settings, budgets)
        finally:
            searches.stop()


def _rows(args, device, tasks, report, hints, searches, settings, budgets) -> dict:
    """Each task's row in turn, while it fits the time limit; the report saved after each."""
    deadline = (time.monotonic() if args.started is None else args.started) + args.time_limit
    variants: dict[str, ModelVariants] = {}  # the model of the equal row at hand (its Torch-Pruning modules)
    denses: dict[tuple[str, int], Program] = {}  # (model, batch) -> the dense Program, captured once
    defaults: dict[tuple[str, int], Program] = {}  # (model, batch) -> prunefx's defaults, pruned once, when read
    order = list(dict.fromkeys(model for kind, model, _ in tasks if kind == "equal"))  # whose searches start next

    def equal(reference: str, batch: int) -> dict:
        if reference not in variants:  # one model's at a time
            variants.clear()
            following = dict(zip(order, order[1:])).get(reference)
            try:
                variants[reference] = ModelVariants(reference, batch, searches=searches, following=following)
            except Exception:
                searches.drop(reference)  # its capture or pruning failed: its searches are of no use
                raise
            denses[reference, batch] = variants[reference].programs["dense"]
            defaults[reference, batch] = variants[reference].programs["prunefx"]
        return equal_macs_row(variants[reference], batch, settings, device)

    def dense_at(reference: str, batch: int) -> Program:
        if (reference, batch) not in denses:
            denses[reference, batch] = model_and_program(reference, input_shape=_shape(reference, batch))[1].eval()
        return denses[reference, batch]

    def defaults_at(reference: str, batch: int) -> Program:
        if (reference, batch) not in defaults:
            defaults[reference, batch] = _prunefx_defaults(dense_at(reference, batch))
        return defaults[reference, batch]

    def latency(reference: str, batch: int) -> dict:
        return latency_row(reference, dense_at(reference, batch), defaults_at(reference, batch), batch, settings,
                           device)

    def widths(reference: str, batch: int) -> dict:
        return widths_row(reference, batch, settings, device, dense_at(reference, batch))

    rows = {"equal": equal, "latency": latency, "widths": widths,
            "budget": lambda reference, batch: budget_row(reference, batch, budgets[batch], settings, device)}
    for number, (kind, reference, batch) in enumerate(tasks, 1):
        what = row_name(kind, batch, budgets)
        needs = expected_seconds(kind, report, hints)
        searches.drop_overdue()
        if deadline - time.monotonic() < needs:  # a row cut off half-way is GPU time lost: start only what fits
            report["skipped"].append(f"{reference}: {what} (time limit)")
            if kind == "equal":
                searches.drop(reference)
            continue
        start = time.perf_counter()
        try:
            row = rows[kind](reference, batch)
        except Exception as error:  # one model's failure is its row's finding; the others still run
            traceback.print_exc()
            row = {"model": reference, "batch": batch, "error": _error_text(error),
                   **({"speedup_asked": budgets[batch]} if kind == "budget" else {})}
        row["seconds"] = round(time.perf_counter() - start, 1)
        report[ROWS[kind]].append(row)
        print(f"gpu_speedup: [{number}/{len(tasks)}] {reference}, {what}: {row['seconds']:.0f} s", flush=True)
        save(report, args.out)  # a run stopped from outside keeps every row finished
    return report


def row_name(kind: str, batch: int, budgets: dict[int, float]) -> str:
    """How the log and the skipped list name a row of `kind` at `batch` (after its model)."""
    return {"equal": f"equal-MACs row at batch {batch}", "latency": f"latency choice at batch {batch}",
            "widths": f"width multiples at batch {batch}",
            "budget": f"--speedup {budgets.get(batch)} at batch {batch}"}[kind]


def expected_seconds(kind: str, report: dict, hints: dict[str, float]) -> float:
    """What the next row of `kind` is expected to take: the longest of its kind timed, here or in the
    `--resume` file (`hints`), else the longest of any kind (a first row cut off half-way is GPU time lost),
    else 0: the very first row always starts."""
    timed = {key: seconds for key in ROWS if (seconds := row_seconds(report[ROWS[key]], hints.get(key))) is not None}
    return timed.get(kind, max(timed.values(), default=0.0))


def row_seconds(rows: list[dict], earlier: float | None = None) -> float | None:
    """The longest of `rows` that recorded its seconds, and `earlier`; None where there is neither."""
    seconds = [row["seconds"] for row in rows if "seconds" in row] + ([] if earlier is None else [earlier])
    return max(seconds, default=None)


def earlier_seconds(path: Path | None) -> dict[str, float]:
    """The longest row of each kind in the file `--resume` names, whatever code or GPU measured it: what a row
    takes before this run has timed one of its kind. Kinds without a timed row are left out."""
    if path is None or not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    longest = {kind: row_seconds(rows.get(key, [])) for kind, key in ROWS.items()}
    return {kind: seconds for kind, seconds in longest.items() if seconds is not None}


def resumed(path: Path | None, machine: dict) -> dict:
    """The rows of an earlier run to keep: those of `path` when it was measured on the same GPU, precision,
    torch and code (the stamp of the files that decide a figure, benchmarks/build_stamp.py), else none."""
    none = {key: [] for key in ROWS.values()}
    if path is None or not path.is_file():
        return none
    rows = json.loads(path.read_text())
    earlier = rows.get("machine", {})
    same = ("gpu", "precision", "torch", "driver", "code")
    if machine.get("code") is None or any(earlier.get(key) != machine.get(key) for key in same):
        print(f"gpu_speedup: {path} was measured on other hardware, software or code: starting afresh", flush=True)
        return none
    kept = {key: rows.get(key, []) for key in ROWS.values()}
    print(f"gpu_speedup: resuming {path}: {sum(map(len, kept.values()))} rows kept", flush=True)
    return kept


def save(report: dict, out: Path) -> None:
    """Both files whole: gpu-check stops this process from outside, and --resume reads the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / "gpu_speedup.json", json.dumps(report, indent=2) + "\n")
    write_whole(out / "gpu_speedup.md", markdown(report))


def markdown(report: dict) -> str:
    machine = report["machine"]
    names = ("prunefx", "torch-pruning", "torch-pruning r8")

    def cell(entry):
        if not entry:
            return "-"
        if "error" in entry:
            return "failed"
        return f"{entry['speedup']:.2f}x ({entry['macs_kept']:.2f} MACs)"

    measured = [r for r in report["equal_macs"] if "error" not in r]
    equal = markdown_table(["model", "batch", "dense ms", *names],
                           [[r["model"], r["batch"], f"{r.get('dense_ms', float('nan')):.3f}",
                             *[cell(r.get(n)) for n in names]] for r in measured])
    chosen = [r for r in report.get("latency_choice", []) if "error" not in r]
    latency = markdown_table(["model", "batch", "dense ms", "prunefx (MACs choice)", "prunefx latency",
                              "latency table", "table predicts (MACs, latency)"],
                             [[r["model"], r["batch"], f"{r.get('dense_ms', float('nan')):.3f}", cell(r.get("prunefx")),
                               cell(r.get("prunefx latency")), _table(r.get("latency_table")),
                               _predicted(r.get("latency_table"))] for r in chosen])
    budgets = markdown_table(["model", "batch", "asked", "route", "channels chosen by", "re-measured (fresh pair)",
                              "own timer, own process", "MACs kept", "within [0.95 S, 1.25 S]"],
                             [[r["model"], r["batch"], f"{r['speedup_asked']}x", r.get("route", "width"),
                               r.get("choice", "-"),
                               f"{r['remeasured']:.2f}x" if "remeasured" in r else r.get("refused", "-"),
                               _independent(r.get("independent")),
                               f"{r['macs_kept']:.2f}" if "macs_kept" in r else "-",
                               {True: "yes", False: "no"}.get(r.get("within"), "refused" if "refused" in r else "-")]
                              for r in report["budgets"] if "error" not in r])
    widths = markdown_table(["model", "batch", *[f"round_to {m}" for m in ROUND_TO],
                             f"round_to {ROUND_TO[0]}, batch norms folded in both",
                             f"round_to {ROUND_TO[0]}, both compiled (inductor)"],
                            [[r["model"], r["batch"], *[cell(r["round_to"].get(str(m))) for m in ROUND_TO],
                              cell(r.get("folded")), cell(r.get("compiled"))]
                             for r in report.get("widths", []) if "error" not in r])
    failures = [f"\n- failed: {r['model']} at batch {r['batch']}"
                f"{' --speedup ' + str(r['speedup_asked']) if 'speedup_asked' in r else ''}: {r['error']}"
                for key in ROWS.values() for r in report.get(key, []) if "error" in r]
    failures += [f"\n- {r['model']} at batch {r['batch']}, {name}: failed: {r[name]['error']}"
                 for r in measured + chosen for name in names if "error" in r.get(name, {})]
    failures += [f"\n- {r['model']} at batch {r['batch']}, both compiled: failed: {r['compiled']['error']}"
                 for r in report.get("widths", []) if "error" in r.get("compiled", {})]
    skipped = "".join(failures) + "".join(f"\n- skipped: {line}" for line in report["skipped"])
    return (f"# GPU speed-ups at equal MACs and latency budgets\n\n{machine['gpu']}, driver {machine['driver']}, "
            f"torch {machine['torch']}, {machine['timing']}, random weights.\n\n"
            f"## Equal MACs (speed-up over dense)\n\n{equal}\n\n"
            "## The latency choice at the MACs of prunefx's defaults\n\n*prunefx latency*: channels chosen by a "
            "per-layer latency table timed on the GPU at the row's batch, timed against dense beside the MACs choice "
            f"in the same row; *latency table*: its cost (every entry timed anew).\n\n{latency}\n\n"
            f"## prunefx --speedup on the cuda backend\n\n{budgets}\n\n"
            f"## Width multiples (prunefx's defaults at half the MACs)\n\n{widths}\n{skipped}\n")


def _table(entry: dict | None) -> str:
    return "-" if not entry else f"{entry['table_s']:.1f} s, {entry['table_entries']} entries"


def _predicted(entry: dict | None) -> str:
    """The speed-ups the latency table predicts for both choices (its timed layers' sums), where recorded."""
    predicted = (entry or {}).get("predicted_ms")
    if not predicted:
        return "-"
    return ", ".join(f"{predicted['dense'] / predicted[name]:.2f}x" for name in ("prunefx", "prunefx latency"))


def _independent(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['speedup']:.2f}x" if "speedup" in entry else f"failed: {entry.get('error', '')}"


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--runs", type=int, default=50, help="timed replays per search measurement (x4 confirmed)")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds before the rest is skipped")
    parser.add_argument("--out", type=Path, help="folder for gpu_speedup.{json,md} (default benchmarks/results)")
    parser.add_argument("--torch-pruning-timeout", type=float, default=150.0,
                        help="seconds each Torch-Pruning search may take (its own process)")
    parser.add_argument("--resume", type=Path, help="an earlier gpu_speedup.json whose rows are kept when it was "
                                                    "measured on the same GPU, software and code")
    parser.add_argument("--code", default=None, help="the code's stamp (default: benchmarks/build_stamp.py's digest "
                                                     "where git can list the files)")
    parser.add_argument("--missing-first", type=Path,
                        help="a published gpu_speedup.json: the rows it lacks run first (a run of minutes fills in "
                             "what is missing)")
    parser.add_argument("--smoke", action="store_true", help="one small model on a CPU stand-in for the device")
    parser.set_defaults(started=None)  # when the time limit counts from (main: the process's start)
    args = parser.parse_args(argv)
    if args.code is None:
        args.code = _code_stamp()
    return args


def _code_stamp() -> str | None:
    try:
        return build_stamp.code_digest()
    except (OSError, subprocess.CalledProcessError):  # no git, or no repository (a copied tree)
        return None


def main(argv=None) -> int:
    args = parse(argv)
    args.started = STARTED
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_speedup: needs an NVIDIA GPU with CUDA (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-speedup-smoke-")) if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        print("gpu_speedup: --smoke results are not published in benchmarks/results", file=sys.stderr)
        return 2
    args.out = out
    report = run(args)
    save(report, out)
    print(f"wrote {out / 'gpu_speedup.json'} and {out / 'gpu_speedup.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
