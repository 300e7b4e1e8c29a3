"""detector_pruning: Ultralytics YOLO at half the MACs, dense vs prunefx vs Torch-Pruning in ONNX Runtime.

For each model (`ultralytics:yolov8n.yaml`, `ultralytics:yolo11n.yaml`: built without weights, captured in
their export-mode forward, decoded boxes and class scores, no NMS), at 1x3xSIZExSIZE:
- prunefx: remove_channels to `--macs` (0.5) of the dense MACs, l2 importance, round_to 16 (ONNX Runtime's
  AVX-512 blocks), the softmax inputs kept (the 16 distribution-focal-loss bins: prunefx.detectors.softmax_nodes);
- Torch-Pruning: its documented YOLOv8 recipe, re-implemented here: every C2f-style block (C2f, and
  YOLO11's C3k2, which inherits its chunk-based forward) is rewritten with two separate convolutions in
  place of `cv1(x).chunk(2)` (checked to give the same outputs), the Detect head is ignored, and
  MetaPruner with MagnitudeImportance(p=2) prunes at a uniform ratio, found by bisection until prunefx's
  MAC counter reads the target; round_to 16 like prunefx. A failure is recorded with its message.
Both tools' models are captured, counted and exported by prunefx; each pruned ONNX file is timed against
the dense one alternately in this process (common.rounds_side_by_side), ONNX Runtime on the CPU,
batch 1, `--threads` threads, in `--repeats` rounds that each time every pruned file in turn (the speed-up
is the runtime's over the rounds: the ratio of the pooled medians, with its 90 % interval, as `prunefx bench
--vs` gives it). Exactness of the prunefx model is checked the cheap way that still means something: its ONNX
parity with torch.

Writes benchmarks/results/detector_pruning.json and .md (with --quick: only where --output-dir says).

    .venv/bin/python benchmarks/detector_pruning.py [--models yolov8n yolo11n] [--size 320] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch
import torch_pruning as tp
from common import (
    BLOCK,
    RESULTS,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    rounds_side_by_side,
    speedup_fields,
    write_results,
)

from prunefx.detectors import softmax_nodes
from prunefx.graph import capture, count
from prunefx.models import build_model
from prunefx.passes.core.pipeline import Pipeline
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import OnnxRuntimeSession, export_onnx, onnx_runner

NAME = "detector_pruning"
MODELS = {"yolov8n": "ultralytics:yolov8n.yaml", "yolo11n": "ultralytics:yolo11n.yaml"}
# prunefx ranks channels globally (its default) or removes the same fraction of every group (local, like
# Torch-Pruning's uniform ratio): both, so that a latency difference between the tools can be told apart.
VARIANTS = ("prunefx", "prunefx-local", "torch-pruning")
ROUND_TO = 16
TOLERANCE = 0.03   # accepted relative error of the pruned MACs against the target


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="NAME")
    parser.add_argument("--size", type=int, default=320, help="square input size (default 320)")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the dense MACs to keep (0.5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per pair (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per pair (default 10)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds, each timing every pruned file against the dense one (default 3)")
    parser.add_argument("--tp-seconds", type=int, default=60,
                        help="time limit of one Torch-Pruning pruning (default 60 s; it takes ~2 s on yolov8n)")
    parser.add_argument("--quick", action="store_true", help="development run: 10 timed runs, 1 repeat; "
                        "writes no results unless --output-dir is given")
    parser.add_argument("--output-dir", type=Path, default=None, help="default benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.runs, args.repeats = 3, 10, 1
    if args.output_dir is None and not args.quick:
        args.output_dir = RESULTS
    return args


# --- Torch-Pruning ------------------------------------------------------------------------------------

class SplitC2f(torch.nn.Module):
    """A C2f-style block whose first conv is two convs, one per half: `cv1(x).chunk(2, 1)` becomes
    `(first(x), second(x))`, which Torch-Pruning can follow (it cannot follow the chunk)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.first, self.second = _conv_slice(block.cv1, 0, half), _conv_slice(block.cv1, half, 2 * half)
        self.m, self.cv2 = block.m, block.cv2
        for attribute in ("f", "i", "type", "np"):  # Ultralytics' routing: which earlier outputs feed the block
            if hasattr(block, attribute):
                setattr(self, attribute, getattr(block, attribute))

    def forward(self, x):
        y = [self.first(x), self.second(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _conv_slice(conv_block: torch.nn.Module, start: int, stop: int) -> torch.nn.Module:
    """A copy of an Ultralytics Conv (conv + batch norm + activation) keeping output channels start:stop."""
    part = copy.deepcopy(conv_block)
    conv, norm = part.conv, part.bn
    conv.weight = torch.nn.Parameter(conv.weight.data[start:stop].clone())
    conv.out_channels = stop - start
    for name in ("weight", "bias"):
        setattr(norm, name, torch.nn.Parameter(getattr(norm, name).data[start:stop].clone()))
    norm.running_mean, norm.running_var = norm.running_mean[start:stop].clone(), norm.running_var[start:stop].clone()
    norm.num_features = stop - start
    return part


def split_c2f_blocks(model: torch.nn.Module) -> int:
    """Replace every block with C2f's chunk forward (C2f, C3k2) by a SplitC2f, in place; return how many."""
    from ultralytics.nn.modules.block import C2f  # C3k2 is a subclass

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f):
                setattr(parent, name, SplitC2f(child))
                replaced += 1
    return replaced


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    """Raise TimeLimit inside the block after `seconds` (SIGALRM: Torch-Pruning's loops are plain Python)."""
    def expire(_signum, _frame):
        raise TimeLimit(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tp_prune(dense_module, example, ratio: float, seconds: int) -> torch.nn.Module:
    from ultralytics.nn.modules.head import Detect

    model = copy.deepcopy(dense_module)
    split_c2f_blocks(model)
    ignored = [m for m in model.modules() if isinstance(m, Detect)]
    with time_limit(seconds, "Torch-Pruning's MetaPruner (building its dependency groups and pruning)"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      global_pruning=False, pruning_ratio=ratio, ignored_layers=ignored,
                                      round_to=ROUND_TO)
        pruner.step()
    return model.eval()


def prune_torch_pruning(dense_module, example, macs: float, dense_macs: int, seconds: int):
    """Bisection on Torch-Pruning's uniform ratio until prunefx counts `macs` of the dense MACs."""
    check = copy.deepcopy(dense_module)
    split_c2f_blocks(check)
    with torch.no_grad():
        error = float((check(example) - dense_module(example)).abs().max())
    low, high, tries, best = 0.0, 0.8, [], None
    while len(tries) < 10 and high - low > 0.005:
        ratio = 0.5 * (low + high)
        program = capture(tp_prune(dense_module, example, ratio, seconds), example, name="torch-pruning").eval()
        kept = count(program).macs / dense_macs
        tries.append({"ratio": ratio, "macs_kept": kept})
        if best is None or abs(kept - macs) < abs(best[1] - macs):
            best = (program, kept, ratio)
        if abs(kept - macs) <= 0.01 * macs:
            break
        low, high = (ratio, high) if kept > macs else (low, ratio)
    program, kept, ratio = best
    return program, {"split_c2f_max_abs_error": error, "pruning_ratio": ratio, "macs_kept": kept,
                     "macs_target_met": abs(kept - macs) <= TOLERANCE * macs, "bisection": tries}


# --- prunefx --------------------------------------------------------------------------------------------

def prune_prunefx(dense, macs: float, ranking: str):
    config = {"macs": macs, "round_to": ROUND_TO, "importance": "l2", "ranking": ranking,
              "keep": softmax_nodes(dense)}
    stats = Pipeline([(remove_channels, config)]).run(dense)
    report = stats.stats()["remove_channels"]
    blocked = [{"size": b["size"], "operators": b["operators"]} for b in report["blocked"]]
    return stats.program, {"config": config, "macs_kept": report["macs_after"] / report["macs_before"],
                           "blocked": blocked}


# --- one model ------------------------------------------------------------------------------------------

def _one_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def _stats(latency) -> dict:
    return {key: getattr(latency, key) for key in ("median_ms", "p90_ms", "p99_ms", "min_ms", "runs")}


def time_variants(dense_path: Path, files: dict[str, Path], inputs, args) -> dict[str, dict]:
    """Every variant against the dense model in `--repeats` rounds, each round timing all of them in an order
    that turns each round (common.rounds_side_by_side): a slow spell of the machine reaches every variant alike.
    Per variant: the runtime's speed-up over its rounds (the ratio of the pooled medians, with its interval over
    the rounds), the pooled latencies, and each round's speed-up, sorted and in order."""
    dense = onnx_runner(dense_path, inputs, threads=args.threads)
    runners = {variant: onnx_runner(path, inputs, threads=args.threads) for variant, path in files.items()}
    timed = rounds_side_by_side(dense, runners, rounds=args.repeats, runs=args.runs, warmup=args.warmup,
                                threads=args.threads)
    return {variant: {"dense": _stats(pooled.a), "pruned": _stats(pooled.b), **speedup_fields(pooled),
                      "speedups_of_repeats": sorted(each), "round_speedups": each}
            for variant, (pooled, each) in timed.items()}


def he_init(model: torch.nn.Module) -> None:
    """Ultralytics' default initialisation shrinks activations layer by layer to ~1e-10 at the head: tiny
    floats that can run at another speed than trained activations (denormals) and make parity vacuous.
    Draw every trainable conv for unit gain instead (the DFL integral conv is frozen and stays)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.weight.requires_grad:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)


def parity(program, path: Path) -> dict:
    """Largest ONNX Runtime vs torch difference of the boxes (rows 0-3) and of the class scores (rows 4-),
    each relative to its own largest magnitude (pixels and probabilities differ by 1000x)."""
    x = program.example_inputs[0]
    got = torch.from_numpy(OnnxRuntimeSession(path, threads=1).run(x)[0])
    with torch.no_grad():
        want = program(x)
    return {part: float((got[:, rows] - want[:, rows]).abs().max() / want[:, rows].abs().max())
            for part, rows in (("boxes", slice(0, 4)), ("scores", slice(4, None)))}


def benchmark_model(name: str, args, workdir: Path) -> dict:
    spec = build_model(MODELS[name], image_size=args.size)
    he_init(spec.module)
    example = torch.rand(spec.default_input_shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's note about the anchors Ultralytics assigns in forward
        dense = capture(spec.module, example, name=name).eval()
    dense_cost = count(dense)
    dense_onnx = export_onnx(dense, workdir / f"{name}_dense.onnx")
    entry = {"model": MODELS[name], "input_shape": list(example.shape),
             "dense": {"macs": dense_cost.macs, "params": dense_cost.params,
                       "onnx_parity": parity(dense, dense_onnx.path)}, "variants": {}}
    files = {}
    for variant in VARIANTS:  # prune and export everything before timing anything
        print(f"[{name}] pruning: {variant} ...", file=sys.stderr)
        start = time.perf_counter()
        try:
            if variant.startswith("prunefx"):
                program, details = prune_prunefx(dense, args.macs, "local" if variant.endswith("local") else "global")
            else:
                program, details = prune_torch_pruning(spec.module, example, args.macs, dense_cost.macs,
                                                       args.tp_seconds)
            exported = export_onnx(program, workdir / f"{name}_{variant}.onnx")
            errors = parity(program, exported.path)
        except Exception as error:  # a tool that cannot prune or export a model is a result, not a crash
            entry["variants"][variant] = {"error": _one_line(error)}
            continue
        cost = count(program)
        entry["variants"][variant] = {"macs": cost.macs, "params": cost.params,
                                      "macs_reduction": dense_cost.macs / cost.macs, "onnx_parity": errors,
                                      "prune_seconds": time.perf_counter() - start, **details}
        files[variant] = exported.path
    print(f"[{name}] timing dense vs {', '.join(files)}, round by round ...", file=sys.stderr)
    for variant, latency in time_variants(dense_onnx.path, files, dense.example_inputs, args).items():
        entry["variants"][variant]["latency"] = latency
    return entry


# --- report ---------------------------------------------------------------------------------------------

def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for entry in report["models"]:
        model, dense = entry["model"].partition(":")[2], entry["dense"]
        for variant, result in entry["variants"].items():
            if "error" in result:
                rows.append([model, variant, f"{dense['macs'] / 1e6:.0f} M", "failed: " + result["error"],
                             "", "", "", "", ""])
                continue
            latency = result["latency"]
            spread = latency["speedups_of_repeats"]
            rows.append([model, variant, f"{dense['macs'] / 1e6:.0f} M", f"{result['macs'] / 1e6:.0f} M",
                         f"{result['macs_reduction']:.2f}x", f"{latency['dense']['median_ms']:.2f}",
                         f"{latency['pruned']['median_ms']:.2f}",
                         f"**{latency['speedup']:.2f}x**{interval_cell(latency)} "
                         f"({min(spread):.2f}-{max(spread):.2f})",
                         f"{result['onnx_parity']['boxes']:.1e} / {result['onnx_parity']['scores']:.1e}"])
    return rows


def markdown(report: dict) -> str:
    settings, machine = report["settings"], report["machine"]
    table = markdown_table(["model", "tool", "MACs dense", "MACs pruned", "MACs reduction", "dense ms",
                            "pruned ms", "speed-up (repeats)", "ONNX parity boxes / scores"], table_rows(report))
    notes = []
    for entry in report["models"]:
        errors = entry["dense"]["onnx_parity"]
        notes.append(f"- {entry['model']}, dense model's own ONNX parity (the reference for the column): boxes "
                     f"{errors['boxes']:.1e}, scores {errors['scores']:.1e}. The scores of these random-weight heads sit "
                     "near sigmoid(-11) (Ultralytics' class bias init), where ONNX Runtime's sigmoid differs from "
                     "torch's by that much in the dense model too.")
        for variant, result in entry["variants"].items():
            if result.get("blocked"):
                notes.append(f"- {entry['model']}, {variant}: groups kept (blocked) by "
                             + ", ".join(f"{b['operators']} ({b['size']} channels)" for b in result["blocked"]))
            if "macs_target_met" in result and not result["macs_target_met"]:
                notes.append(f"- {entry['model']}, {variant}: MACs target missed ({result['macs_kept']:.3f} kept)")
    return f"""# Detector pruning: Ultralytics YOLO, dense vs prunefx vs Torch-Pruning in ONNX Runtime

Produced by `{report['command']}` on {machine['date_utc']} UTC.

- Machine: {machine_summary(machine)}; Torch-Pruning {report['torch_pruning_version']}, Ultralytics
  {report['ultralytics_version']}. Load average (1 min) at start {machine['load_average_at_start'][0]:.2f}, at end
  {machine['load_average_at_end'][0]:.2f} (this shared 2-core machine; ratios are measured side by side for that reason).
- Models built from the yaml shipped with Ultralytics, random He-initialised conv weights (Ultralytics' own init
  leaves ~1e-10 activations at the head), export-mode
  forward (decoded boxes and class scores, no NMS), input 1x3x{settings['size']}x{settings['size']}. Target: keep
  {settings['macs']} of the dense MACs (within {TOLERANCE:.0%}), counted by prunefx for both tools.
- prunefx: remove_channels, l2, round_to {ROUND_TO}, global ranking (prunefx) or the same fraction of every group
  (prunefx-local), softmax inputs kept (the 16 DFL bins).
- Torch-Pruning: C2f/C3k2 blocks split into two convolutions (its documented YOLOv8 workaround, re-implemented),
  Detect head ignored, MetaPruner + MagnitudeImportance(p=2), uniform ratio by bisection, round_to {ROUND_TO}.
- Latency: ONNX Runtime CPU, batch 1, {settings['threads']} threads, {settings['warmup']} warm-up and
  {settings['runs']} timed runs per side and round, dense and pruned alternated in blocks of {BLOCK};
  {settings['repeats']} rounds; median ms over all rounds, speed-up = their ratio with its 90 % interval
  (Student's t over the rounds, as `prunefx bench --vs` states one), lowest and highest round in brackets.

{table}
{chr(10).join(notes)}
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import ultralytics  # AGPL-3.0: a development dependency (the dev extra), never one of prunefx
    except ImportError:
        print("detector_pruning needs ultralytics: pip install -e .[dev] (or pip install ultralytics)", file=sys.stderr)
        return 2

    report = {"benchmark": NAME, "command": command_line(), "machine": machine_info(),
              "torch_pruning_version": metadata.version("torch-pruning"),
              "ultralytics_version": ultralytics.__version__,
              "settings": {"size": args.size, "macs": args.macs, "threads": args.threads, "runs": args.runs,
                           "warmup": args.warmup, "repeats": args.repeats, "round_to": ROUND_TO},
              "models": []}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="prunefx-detectors-") as tmp:
        for name in args.models:
            report["models"].append(benchmark_model(name, args, Path(tmp)))
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    text = markdown(report)
    print(text)
    if args.output_dir is not None:
        json_path, md_path = write_results(NAME, report, text, folder=args.output_dir)
        print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
