"""Helpers shared by the benchmark scripts (this is not a benchmark; run_all.py skips it).

- `machine_info()`: what a reader needs to judge a timing: CPU model and flags, cores, versions.
- `command_line()`: the exact command that is running, to print next to the results it produced.
- `write_results(name, data, markdown)`: benchmarks/results/NAME.json and NAME.md (or under
  $PRUNEFX_RESULTS_DIR when set: a trial run that must not overwrite the published files); the JSON gets a
  `provenance` record (`provenance()`: command, date, code version, CPU model and flags).
- `BUILD`: the folder benchmarks resume from (build/, or $PRUNEFX_BENCH_BUILD).
- `modelopt_environment()`: the environment of a child process that imports NVIDIA ModelOpt, installed beside
  the venv in MODELOPT_PATH (benchmarks/modelopt_side_by_side.py's docstring has the pip command).
- `side_by_side()` (`rounds_side_by_side()` beneath it): several pruned models timed against the dense one
  round by round, so that no variant is timed in a half of its own; each speed-up is the runtime's one
  statistic (`speedup_fields()`: the pooled ratio of medians and its interval over the rounds, as
  `prunefx bench --vs` states it; here the rounds reuse each runner's session in one process, where bench's are
  fresh processes, so the interval leaves out how sessions differ from one process to the next).
- `markdown_table()`, `relative_difference()`, `realistic_batchnorm()`: small pieces several
  benchmarks need.

Benchmark scripts run as `python benchmarks/NAME.py`, so this folder is on sys.path and they
import it as `from common import ...`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunefx.graph.whole_files import write_whole
from prunefx.reports.budget_text import interval_text
from prunefx.runtime.measure.latency import LatencyComparison, pooled_rounds, timing_round
from prunefx.runtime.measure.machine_load import look, others_share

Key = TypeVar("Key", bound=Hashable)

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = Path(os.environ.get("PRUNEFX_RESULTS_DIR") or BENCHMARKS / "results")
# What a benchmark keeps to resume from (trained baselines, finished runs, exported files): build/ unless
# $PRUNEFX_BENCH_BUILD says where; benchmarks/run_all.py gives every run of `make bench` one fresh folder.
BUILD = Path(os.environ.get("PRUNEFX_BENCH_BUILD") or REPO / "build")
# compare_latency's blocks: untimed settling calls, then timed calls of one side, then of the other.
BLOCK, SETTLE = 10, 2
# ModelOpt's [onnx] extra pins packages this CPU machine neither needs nor has: it lives beside the venv.
MODELOPT_PATH = REPO / ".venv" / "modelopt"


def modelopt_version() -> str:
    """The version of ModelOpt in MODELOPT_PATH; exits in one line where it is not there, before a run of minutes
    would publish its rows as failures."""
    metadata = next(MODELOPT_PATH.glob("nvidia_modelopt-*.dist-info"), None)
    if metadata is None:
        sys.exit(f"ModelOpt is not installed in {MODELOPT_PATH}: `make .venv/modelopt/.prunefx-installed` "
                 "installs it (`make bench` does)")
    return metadata.name.split("-")[1].removesuffix(".dist")


def modelopt_environment() -> dict[str, str]:
    """os.environ with MODELOPT_PATH first on PYTHONPATH, for a child process that imports modelopt (its import
    patches onnxruntime.quantization, so it never runs in a benchmark's own process)."""
    path = os.pathsep.join(filter(None, [str(MODELOPT_PATH), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(**settings) -> dict:
    """CPU, cores, OS and library versions, plus the benchmark's own settings (threads, runs, ...)."""
    flags = set(_cpuinfo().get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("torch", "torchvision", "onnx", "onnxruntime", "prunefx")},
        # Others' work on the same machine shows up here; a high value means noisy timings.
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        **settings,
    }


def _shown(path: str) -> str:
    """A path relative to the repository when it lies inside it (.venv/bin/python, benchmarks/x.py)."""
    try:
        return str(Path(path).absolute().relative_to(REPO))
    except ValueError:
        return path


def command_line() -> str:
    """The command that is running, as typed from the repository root."""
    return shlex.join([_shown(sys.executable), _shown(sys.argv[0]), *sys.argv[1:]])


def code_version() -> str | None:
    """The commit the code was run from, `-dirty` added when tracked files had changes; None outside git."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=REPO,
                                   capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if described.returncode != 0:
        return None
    return described.stdout.strip() or None


_STARTED = look()  # the cores' clocks when the benchmark began (provenance's others_share)


def provenance() -> dict:
    """What every results file records, whatever else its script writes: the command that ran (from the
    repository root), when, from which code, on which CPU (model and instruction-set flags), and the share of the
    cores other processes took while it ran (runtime/measure/machine_load.py; None where not known): a figure
    measured beside other work is suspect, whatever the load average said at the start."""
    return {"command": command_line(), "others_share": others_share(_STARTED, look()),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "code_version": code_version(), "cpu": cpu_model(),
            "cpu_flags": sorted(set(_cpuinfo().get("flags", "").split())), "logical_cpus": os.cpu_count(),
            "platform": platform.platform()}


def write_results(name: str, data: dict, markdown: str, *, folder: Path = RESULTS) -> tuple[Path, Path]:
    """Write NAME.json (with its `provenance`) and NAME.md under `folder` (benchmarks/results by default), each
    whole (a run stopped mid-write, as the scripts that save after every row can be, keeps the previous file);
    return both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    write_whole(json_path, json.dumps({**data, "provenance": provenance()}, indent=2) + "\n")
    write_whole(md_path, markdown.rstrip("\n") + "\n")
    return json_path, md_path


def publish_results(name: str, data: dict, markdown: str, *, folder: Path = RESULTS) -> int:
    """write_results, then the Markdown on stdout and where both files went on stderr; 0, main's exit code."""
    json_path, md_path = write_results(name, data, markdown, folder=folder)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def per_model_numbers(values: Sequence[str], models: Sequence[str], option: str) -> dict[str, int]:
    """`["8", "mobilenetv2_small=4"]` -> {every model: 8, but mobilenetv2_small: 4}: an option such as
    `--baseline-epochs 8 mobilenetv2_small=4`. ValueError, naming `option`, for anything else."""
    numbers: dict[str, int] = {}
    for value in sorted(values, key=lambda v: "=" in v):  # N first, then the models' own
        model, _, number = value.rpartition("=")
        if (model and model not in models) or not number.isdigit() or int(number) < 1:
            raise ValueError(f"{option}: {value!r} is neither N nor MODEL=N (models: {', '.join(models)})")
        numbers.update({model: int(number)} if model else dict.fromkeys(models, int(number)))
    missing = [model for model in models if model not in numbers]
    if missing:
        raise ValueError(f"{option}: no number for {', '.join(missing)} (give N for every model)")
    return numbers


def per_model_option(parser: argparse.ArgumentParser, values: Sequence[str], models: Sequence[str],
                     option: str) -> dict[str, int]:
    """per_model_numbers for a command line: a wrong value is the parser's one-line usage error (exit 2)."""
    try:
        return per_model_numbers(values, models, option)
    except ValueError as error:
        parser.error(str(error))


def rounds_side_by_side(dense: Callable[[], object], runners: dict[Key, Callable[[], object]], *, rounds: int,
                        runs: int, warmup: int = 10,
                        threads: int | None = None) -> dict[Key, tuple[LatencyComparison, list[float]]]:
    """Each of `runners` against `dense`, round by round: every round times each runner alternately with the dense
    one (`runs` timed calls a side, in compare_latency's blocks) in an order that turns each round, so a slow spell
    of the machine reaches every variant alike instead of the ones timed during it. Per runner: its comparison over
    the rounds as the runtime reports one (pooled_rounds: the ratio of the pooled medians, Student's t interval over
    the rounds), and each round's own speed-up."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    per_round: dict[Key, list] = {name: [] for name in runners}
    for index in range(rounds):
        for name in (list(runners) if index % 2 == 0 else list(reversed(runners))):
            per_round[name].append(timing_round(_same(dense), _same(runners[name]), warmup, runs, BLOCK, SETTLE,
                                                time.perf_counter, threads))
    return {name: (pooled_rounds(timed), [pooled_rounds([one]).speedup for one in timed])
            for name, timed in per_round.items()}


def side_by_side(dense: Callable[[], object], runners: dict[Key, Callable[[], object]], *, rounds: int,
                 runs: int, warmup: int = 10, threads: int | None = None) -> dict[Key, dict]:
    """rounds_side_by_side's figures per runner: dense_ms and pruned_ms (the pooled medians), the speed-up with its
    interval (speedup_fields), and each round's speed-up (round_speedups)."""
    timed = rounds_side_by_side(dense, runners, rounds=rounds, runs=runs, warmup=warmup, threads=threads)
    return {name: {"dense_ms": pooled.a.median_ms, "pruned_ms": pooled.b.median_ms, **speedup_fields(pooled),
                   "round_speedups": each} for name, (pooled, each) in timed.items()}


def speedup_fields(comparison: LatencyComparison, key: str = "speedup") -> dict:
    """A speed-up as the benchmarks' results state it, the runtime's one statistic (`prunefx bench --vs`'s): the
    ratio of medians (`key`), and its interval (`key`_low, `key`_high) at `confidence` (None where too few units
    give no spread to judge)."""
    return {key: comparison.speedup, f"{key}_low": comparison.speedup_low, f"{key}_high": comparison.speedup_high,
            "confidence": comparison.confidence}


def interval_cell(record: dict, key: str = "speedup") -> str:
    """' (90 % interval 1.45-1.56)' after the speed-up `key` of a record with speedup_fields; '' where it has none
    (too few units to judge a spread, or a results file from before the benchmarks stated one)."""
    if record.get(f"{key}_low") is None:
        return ""
    interval = {"low": record[f"{key}_low"], "high": record[f"{key}_high"], "confidence": record["confidence"]}
    return f" ({interval_text(interval, lead='')})"


def _same(runner: Callable[[], object]) -> Callable[[], Callable[[], object]]:
    """A maker for timing_round that gives `runner` itself each round: its session is kept, as compare_latency's."""
    return lambda: runner


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_summary(info: dict) -> str:
    """One Markdown line describing the machine, for the top of a results file."""
    versions = info["versions"]
    isa = "AVX-512" if info["avx512"] else "AVX2" if info["avx2"] else "no AVX2"
    return (f"{info['cpu']} ({isa}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs), "
            f"Python {info['python']}, torch {versions['torch']}, ONNX Runtime {versions['onnxruntime']}")


def _leaves(outputs) -> list[np.ndarray]:
    arrays = []
    for leaf in pytree.tree_leaves(outputs):
        if isinstance(leaf, torch.Tensor):
            leaf = leaf.detach().cpu().numpy()
        if isinstance(leaf, np.ndarray):
            arrays.append(leaf.astype(np.float64))
    return arrays


def relative_difference(reference, other) -> float:
    """max |reference - other| / max |reference| over all (flattened) outputs, in float64."""
    want, got = _leaves(reference), _leaves(other)
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        raise ValueError("the two sets of outputs differ in number or shape")
    error = max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(want, got))
    scale = max(float(np.max(np.abs(a), initial=0.0)) for a in want)
    return error / scale if scale > 0 else (0.0 if error == 0 else float("inf"))


@torch.no_grad()
def realistic_batchnorm(model: torch.nn.Module, input_shape: Sequence[int], *, seed: int = 0,
                        batches: int = 2) -> torch.nn.Module:
    """Give every batch norm of a randomly initialised model non-trivial parameters and statistics.

    torchvision initialises batch norms to the identity (gamma 1, beta 0, mean 0, var 1), which makes
    folding them trivial. Here gamma ~ U(0.5, 1.5) and beta ~ U(-0.25, 0.25), and the running mean and
    variance are estimated on random-normal inputs (train mode, cumulative average), so activations
    stay at a sane scale through deep networks. Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        if norm.affine:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_((torch.rand(norm.bias.shape, generator=generator) - 0.5) * 0.5)
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every calibration batch counts equally
    model.train()
    for _ in range(batches):
        model(torch.randn(tuple(input_shape), generator=generator))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()
