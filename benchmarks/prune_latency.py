"""prune_latency: ONNX Runtime latency of dense vs channel-pruned models, prunefx against Torch-Pruning.

For each model (1x3x224x224, random weights: latency does not depend on weight values), every
variant removes channels until the model keeps `--macs` (0.5) of its dense MACs:
- prunefx remove_channels, l2 importance, round_to=16, ranking local and global;
- Torch-Pruning (MetaPruner, MagnitudeImportance(p=2), uniform ratio, classifier ignored), with its
  default rounding and with round_to=16. Its pruning ratio is found by bisection, pruning a fresh
  copy of the dense model on each try, until prunefx's own MAC counter says the target is met.
Both tools' models are captured with prunefx `capture`, counted with prunefx `count` and exported
with `export_onnx`, so the MACs and the ONNX pipeline are the same for both. Each pruned model is
timed against the dense one *alternately* in this process (common.rounds_side_by_side), every variant
once per round for `--repeats` rounds (a slow spell of the machine reaches all variants alike), its speed-up
the runtime's over the rounds (the ratio of the pooled medians, with its 90 % interval, as `prunefx bench --vs`),
ONNX Runtime on the CPU at `--threads` threads, twice: with ONNX Runtime's default worker threads that
spin between operators (the target's figure) and with spinning off. The target is speed-up >= 0.9 x
MACs reduction.

Writes benchmarks/results/prune_latency.json and .md (with --quick: only where --output-dir says).

    .venv/bin/python benchmarks/prune_latency.py [--runs 100] [--warmup 10] [--threads 2]
    .venv/bin/python benchmarks/prune_latency.py --quick --models resnet50   # development
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch_pruning as tp
from common import (
    BLOCK,
    REPO,
    RESULTS,
    SETTLE,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    rounds_side_by_side,
    speedup_fields,
    write_results,
)
from timm.models.vision_transformer import Attention

from prunefx.graph import capture, count
from prunefx.models import build_model
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import export_onnx, onnx_runner

NAME = "prune_latency"
MODELS = {
    "resnet50": "torchvision:resnet50",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "convnext_tiny": "torchvision:convnext_tiny",
    "vit_small_patch16_224": "timm:vit_small_patch16_224",
    "efficientnet_b0": "timm:efficientnet_b0",
}
# (tool, variant) -> options; the variant name is what the tables show.
VARIANTS = {
    "prunefx-local": {"tool": "prunefx", "ranking": "local", "round_to": 16},
    "prunefx-global": {"tool": "prunefx", "ranking": "global", "round_to": 16},
    "tp-default": {"tool": "torch-pruning", "round_to": None},
    "tp-round16": {"tool": "torch-pruning", "round_to": 16},
    # The measurement's control: the dense model exported to a second file and timed against the first.
    # Anything but ~1.00x means the side-by-side timing favours one side.
    "dense-copy": {"tool": "control"},
}
INPUT_SHAPE = (1, 3, 224, 224)
NUM_CLASSES = 1000
TOLERANCE = 0.03      # accepted relative error of the pruned MACs against the target (as prunefx's)
TARGET_RATIO = 0.9    # speed-up / MACs reduction that counts as "latency follows MACs"
ALIGNMENT = 16        # the width ONNX Runtime's CPU kernels prefer (AVX-512 blocks of 16 floats)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per pair (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per pair (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the dense MACs to keep (0.5)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="NAME",
                        help=f"models to run (default: {' '.join(MODELS)})")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="NAME",
                        help=f"pruning variants to run (default: {' '.join(VARIANTS)})")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds, each timing every variant against the dense model once; each variant's "
                             "speed-up is pooled over them (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and input (default 0)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of the last results for the models and variants not run now")
    parser.add_argument("--quick", action="store_true",
                        help="development run: 3 warm-up and 10 timed runs; writes no results unless "
                             "--output-dir is given")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the .json and .md go "
                        "(default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.quick:
        args.warmup, args.runs, args.repeats = 3, 10, 1
    if args.output_dir is None and not args.quick:
        args.output_dir = RESULTS
    return args


# --- pruning ---------------------------------------------------------------------------------------

def prune_prunefx(dense_module, example, options: dict, macs: float):
    """prunefx remove_channels on a fresh capture; returns the pruned Program and a summary."""
    program = capture(dense_module, example, name="dense").eval()
    config = {"macs": macs, "round_to": options["round_to"], "importance": "l2",
              "ranking": options["ranking"], "max_ratio": 0.8}
    stats = remove_channels(program, config=config).stats
    groups = stats["groups"]
    details = {
        "config": config,
        "groups": len(groups),
        "groups_pruned": sum(g["width_after"] < g["width_before"] for g in groups),
        # A pruned group that is not a multiple of 16 is the first suspect when latency lags MACs. Factor
        # groups (heads, head-dims) are left out: their widths multiply; unaligned_widths sees the product.
        "groups_unaligned_after": [
            {"id": g["id"], "width_before": g["width_before"], "width_after": g["width_after"],
             "factor": g["factor"], "first_member": g["members"][0]}
            for g in groups if g["width_after"] % ALIGNMENT and not g["factor"]],
        "blocked": [{"size": b["size"], "operators": b["operators"], "members": b["members"][:2]}
                    for b in stats["blocked"]],
    }
    return program, details


def _attention_heads(model) -> dict:
    """Torch-Pruning must know each timm attention's head count to keep heads whole."""
    return {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}


def _fix_attention(model, pruner) -> None:
    """timm's Attention reshapes with num_heads, head_dim and attn_dim; pruning changes them."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            m.attn_dim = m.num_heads * m.head_dim


def tp_prune(dense_module, example, ratio: float, round_to: int | None):
    """Torch-Pruning at a uniform channel ratio on a deep copy (the dense module stays untouched)."""
    model = copy.deepcopy(dense_module)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == NUM_CLASSES]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  global_pruning=False, pruning_ratio=ratio, ignored_layers=classifier,
                                  round_to=round_to, num_heads=_attention_heads(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes about unwrapped parameters (layer scales) are expected
        pruner.step()
    _fix_attention(model, pruner)
    return model.eval()


def prune_torch_pruning(dense_module, example, options: dict, macs: float, dense_macs: int):
    """Bisection on Torch-Pruning's ratio until prunefx counts `macs` of the dense MACs.

    With round_to, a uniform ratio moves many widths by a whole step at once, so MACs jump and the
    target may lie inside a jump: then the closest model is kept and marked `macs_target_met: False`.
    """
    low, high = 0.0, 0.6  # 0.6 of every width leaves ~0.16 of the MACs: surely below any sane target
    tries, best = [], None
    while len(tries) < 10 and high - low > 0.005:
        ratio = 0.5 * (low + high)
        program = capture(tp_prune(dense_module, example, ratio, options["round_to"]), example, name="pruned").eval()
        kept = count(program).macs / dense_macs
        tries.append({"ratio": ratio, "macs_kept": kept})
        if best is None or abs(kept - macs) < abs(best[1] - macs):
            best = (program, kept, ratio)
        if abs(kept - macs) <= 0.01 * macs:  # close enough; tighter only costs more tries
            break
        low, high = (ratio, high) if kept > macs else (low, ratio)
    program, kept, ratio = best
    return program, {"round_to": options["round_to"], "pruning_ratio": ratio, "macs_kept": kept,
                     "macs_target_met": abs(kept - macs) <= TOLERANCE * macs, "bisection": tries}


def unaligned_widths(program) -> dict:
    """Output widths of convolutions and linear layers that are not multiples of 16, with counts
    (the classifier's 1000 classes are left out: no tool prunes them)."""
    widths = Counter(int(p.shape[0]) for p in program.module.parameters()
                     if p.ndim in (2, 4) and p.shape[0] % ALIGNMENT and p.shape[0] != NUM_CLASSES)
    return {str(width): n for width, n in sorted(widths.items())}


# --- one model -------------------------------------------------------------------------------------

def prune_variant(name: str, dense_module, example, dense_macs: int, args):
    options = VARIANTS[name]
    if options["tool"] == "control":
        return capture(dense_module, example, name="dense-copy").eval(), {}
    if options["tool"] == "prunefx":
        return prune_prunefx(dense_module, example, options, args.macs)
    return prune_torch_pruning(dense_module, example, options, args.macs, dense_macs)


def _stats(latency) -> dict:
    return {key: getattr(latency, key) for key in ("median_ms", "p90_ms", "p99_ms", "min_ms", "runs")}


def benchmark_model(name: str, args, workdir: Path) -> dict:
    torch.manual_seed(args.seed)
    dense_module = build_model(MODELS[name]).module.eval()
    example = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(args.seed))
    dense = capture(dense_module, example, name=name).eval()
    dense_macs = count(dense).macs
    dense_onnx = export_onnx(dense, workdir / f"{name}_dense.onnx")
    entry = {"model": MODELS[name], "dense": {"macs": dense_macs, "params": count(dense).params,
                                              "onnx_exporter": dense_onnx.exporter}, "variants": {}}

    # Prune and export everything first: no ONNX Runtime session may compete with torch for the cores.
    pruned_files = {}
    for variant in args.variants:
        start = time.perf_counter()
        print(f"[{name}] pruning: {variant} ...", file=sys.stderr)
        try:
            program, details = prune_variant(variant, dense_module, example, dense_macs, args)
            exported = export_onnx(program, workdir / f"{name}_{variant}.onnx")
        except Exception as error:  # a tool that cannot prune or export a model is a result, not a crash
            entry["variants"][variant] = {"tool": VARIANTS[variant]["tool"], "error": _one_line(error)}
            continue
        cost = count(program)
        entry["variants"][variant] = {
            "tool": VARIANTS[variant]["tool"], "macs": cost.macs, "params": cost.params,
            "macs_reduction": dense_macs / cost.macs, "unaligned_widths": unaligned_widths(program),
            "onnx_exporter": exported.exporter, "prune_seconds": time.perf_counter() - start, **details}
        pruned_files[variant] = exported.path

    for key, spinning in (("latency", True), ("latency_no_spinning", False)):
        print(f"[{name}] timing dense vs {', '.join(pruned_files)}, threads spinning: {spinning} ...", file=sys.stderr)
        for variant, latency in time_variants(dense_onnx.path, pruned_files, dense.example_inputs, spinning,
                                              args).items():
            entry["variants"][variant][key] = latency
    for variant in pruned_files:
        result = entry["variants"][variant]
        result["speedup_per_macs_reduction"] = result["latency"]["speedup"] / result["macs_reduction"]
        control = VARIANTS[variant]["tool"] == "control"
        result["meets_target"] = None if control else result["speedup_per_macs_reduction"] >= TARGET_RATIO
    return entry


def time_variants(dense_path: Path, pruned_paths: dict[str, Path], inputs, spinning: bool, args) -> dict[str, dict]:
    """Every variant against the dense model, side by side (common.rounds_side_by_side), in `--repeats` rounds:
    each round times every variant once, in an order that turns each round, so that this shared 2-core machine's
    slow spells (seconds long) reach every variant alike rather than one variant's repeats. ONNX Runtime's worker
    threads spin between operators (its default, what deploys) or not. A variant's speed-up is the runtime's over
    its rounds (the ratio of the pooled medians, with its interval over the rounds), and its rounds' spread is
    kept."""
    dense = onnx_runner(dense_path, inputs, threads=args.threads, spinning=spinning)
    runners = {variant: onnx_runner(path, inputs, threads=args.threads, spinning=spinning)
               for variant, path in pruned_paths.items()}
    timed = rounds_side_by_side(dense, runners, rounds=args.repeats, runs=args.runs, warmup=args.warmup,
                                threads=args.threads)
    return {variant: _pooled(*result) for variant, result in timed.items()}


def _pooled(pooled, round_speedups: list[float]) -> dict:
    # The ratio of the fastest runs is less sensitive to other load on the machine than the medians.
    return {"dense": _stats(pooled.a), "pruned": _stats(pooled.b), **speedup_fields(pooled),
            "speedup_of_min": pooled.a.min_ms / pooled.b.min_ms, "speedups_of_repeats": sorted(round_speedups)}


def source_version() -> str | None:
    """The commit the prunefx sources are at, with '+dirty' for uncommitted changes (the pass is evolving)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def provenance(report: dict) -> dict:
    return {"command": report.get("command"), "date_utc": report["machine"].get("date_utc"),
            "prunefx_source": report.get("prunefx_source")}


def with_previous_rows(report: dict, previous_path: Path) -> dict:
    """The new report plus the previous one's rows for the (model, variant) pairs not run now (variants
    this benchmark no longer has are dropped). Every row keeps its own dense-vs-pruned pair, timed side by
    side, and says in `measured_by` which run measured it."""
    if not previous_path.is_file():
        return report
    previous = json.loads(previous_path.read_text())
    models = {entry["model"]: entry for entry in report["models"]}
    for old in previous.get("models", []):
        for result in old["variants"].values():  # rows from before rows were labelled: the previous run's
            result.setdefault("measured_by", provenance(previous))
        new = models.get(old["model"])
        if new is None:
            report["models"].append(old)
            models[old["model"]] = old
            continue
        new["variants"] = {**{k: v for k, v in old["variants"].items() if k not in new["variants"]},
                           **new["variants"]}
    order = list(MODELS.values())
    report["models"].sort(key=lambda entry: order.index(entry["model"]) if entry["model"] in order else len(order))
    for entry in report["models"]:  # variants in the order of VARIANTS; retired ones dropped
        entry["variants"] = {k: entry["variants"][k] for k in VARIANTS if k in entry["variants"]}
    return report


# --- report ----------------------------------------------------------------------------------------

def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for entry in report["models"]:
        model, dense_macs = entry["model"].partition(":")[2], entry["dense"]["macs"]
        for variant, result in entry["variants"].items():
            if "error" in result:
                rows.append([model, variant, f"{dense_macs / 1e6:.0f} M", "failed: " + result["error"],
                             "", "", "", "", "", "", "", ""])
                continue
            if "latency" not in result:
                continue
            latency = result["latency"]
            rows.append([
                model, variant, f"{dense_macs / 1e6:.0f} M", f"{result['macs'] / 1e6:.0f} M",
                _reduction(result), f"{latency['dense']['median_ms']:.2f}",
                f"{latency['pruned']['median_ms']:.2f}",
                f"**{latency['speedup']:.2f}x**{interval_cell(latency)}{_spread(latency)}",
                f"{result['speedup_per_macs_reduction']:.2f}", _verdict(result["meets_target"]),
                _no_spinning_note(result), _widths_note(result["unaligned_widths"]),
            ])
    return rows


def _reduction(result: dict) -> str:
    off = "" if result.get("macs_target_met", True) else " (off target)"
    return f"{result['macs_reduction']:.2f}x{off}"


def _verdict(meets_target: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "(control)"}[meets_target]


def _spread(latency: dict) -> str:
    repeats = latency.get("speedups_of_repeats", [])
    return f" ({min(repeats):.2f}-{max(repeats):.2f})" if len(repeats) > 1 else ""


def _no_spinning_note(result: dict) -> str:
    latency = result.get("latency_no_spinning")  # rows measured before this column existed have none
    if latency is None:
        return "not measured"
    ratio = latency["speedup"] / result["macs_reduction"]
    return (f"{latency['dense']['median_ms']:.2f} / {latency['pruned']['median_ms']:.2f} ms: "
            f"{latency['speedup']:.2f}x{_spread(latency)}, {ratio:.2f}")


def _widths_note(widths: dict) -> str:
    total = sum(widths.values())
    return "all aligned" if total == 0 else f"{total} layers, e.g. {', '.join(list(widths)[:4])}"


def _updated_note(report: dict) -> str:
    """Which earlier runs measured the rows this run kept (`--update`)."""
    this = provenance(report)
    earlier = {tuple(result["measured_by"].values()) for entry in report["models"]
               for result in entry["variants"].values() if result.get("measured_by", this) != this}
    if not earlier:
        return ""
    runs = "; ".join(f"`{command}` on {date} UTC (sources at {source or 'an unknown commit'})"
                     for command, date, source in sorted(earlier, key=lambda run: run[1] or ""))
    return (f" Rows not run then were measured by {runs}. Every row is its own dense-vs-pruned pair, "
            "timed side by side.")


def _load(machine: dict) -> str:
    start, end = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    return f"{start[0]:.2f} at start, {end[0]:.2f} at end" if start and end else "unknown"


def markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    table = markdown_table(["model", "tool / variant", "MACs dense", "MACs pruned", "MACs reduction",
                            "dense ms", "pruned ms", "speed-up", "speed-up / MACs reduction",
                            f"meets {TARGET_RATIO}", "threads not spinning: dense / pruned, speed-up, / MACs reduction",
                            "widths not multiple of 16"], table_rows(report))
    return f"""# Channel pruning: dense vs pruned latency in ONNX Runtime, prunefx and Torch-Pruning

Produced by `{report['command']}` on {machine['date_utc']} UTC.{_updated_note(report)}

- Machine: {machine_summary(machine)}; Torch-Pruning {report['torch_pruning_version']};
  prunefx sources at {report.get('prunefx_source') or 'unknown commit'}.
- Load average (1 min) {_load(machine)}: the benchmark keeps {settings['threads']} threads busy; more
  than that means other work shared the CPUs and the timings are noisy.
- Batch 1, input 1x3x224x224, random weights (seed {settings['seed']}). Target: keep
  {settings['macs']} of the dense MACs (within {TOLERANCE:.0%}); MACs of every model, both tools, are
  counted by prunefx on the captured graph (convolutions and linear layers, attention matmuls).
- prunefx: `remove_channels` with importance l2, round_to 16, max_ratio 0.8, local (same fraction per
  group) or global (normalised scores, one threshold) ranking.
- Torch-Pruning (tp): MetaPruner, MagnitudeImportance(p=2), uniform ratio (global_pruning=False),
  classifier ignored, ratio found by bisection; default rounding (tp-default) or round_to=16
  (tp-round16). Its models are captured and exported through the same prunefx pipeline.
- Latency: ONNX Runtime CPU, {settings['threads']} intra-op threads, {settings['warmup']} warm-up and
  {settings['runs']} timed runs per pair, dense and pruned alternated in one process (blocks of {settings['block']}
  timed runs, each after {settings['settle']} untimed ones), in {settings.get('repeats', 1)} rounds that each time
  every pair; median ms over all rounds. Speed-up = dense median / pruned median pooled over the rounds, with
  its 90 % interval (Student's t over the rounds, as `prunefx bench --vs` states one) and, in brackets, the
  lowest and highest round. The target is speed-up >= {TARGET_RATIO} x MACs reduction.
- Threads: the main columns use ONNX Runtime's default, worker threads spinning between operators (what
  a deployed session runs with), stopped at the end of each run (`session.force_spinning_stop`) so that
  the idle session does not compete with the timed one. The "threads not spinning" column times the
  same pair again with `session.intra_op.allow_spinning=0`, the setting of this benchmark's earlier
  runs: every parallel operator then waits for its threads to wake up, a fixed cost per operator that
  weighs most on the small models with many operators (MobileNetV2, EfficientNet-B0).
- dense-copy: the control of the measurement, the dense model exported a second time and timed
  against the first file exactly like a pruned one; it should read 1.00x.
- "off target": Torch-Pruning's uniform ratio with round_to=16 moves many widths by 16 at once, so
  its MACs jump over the target; the closest model is measured (speed-up / MACs reduction still
  compares fairly).
- Last column: output widths of convolution / linear weights that are not multiples of 16 (the
  classifier's 1000 classes left out).

{table}
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {
        "benchmark": NAME,
        "command": command_line(),
        "machine": machine_info(),
        "torch_pruning_version": tp.__version__ if hasattr(tp, "__version__") else None,
        "prunefx_source": source_version(),
        "settings": {"threads": args.threads, "warmup": args.warmup, "runs": args.runs,
                     "repeats": args.repeats, "block": BLOCK, "settle": SETTLE, "seed": args.seed,
                     "macs": args.macs, "input_shape": list(INPUT_SHAPE), "quick": args.quick,
                     "target_speedup_per_macs_reduction": TARGET_RATIO, "macs_tolerance": TOLERANCE},
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="prunefx-bench-") as tmp:
        for name in args.models:
            report["models"].append(benchmark_model(name, args, Path(tmp)))
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for entry in report["models"]:
        for result in entry["variants"].values():
            result["measured_by"] = provenance(report)
    if args.update:
        report = with_previous_rows(report, (args.output_dir or RESULTS) / f"{NAME}.json")
    text = markdown(report)
    print(text)
    if args.output_dir is not None:
        json_path, md_path = write_results(NAME, report, text, folder=args.output_dir)
        print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
