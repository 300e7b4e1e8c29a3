"""The README's headline tables, made from benchmarks/results/*.json: no figure in them is typed by hand.

    .venv/bin/python scripts/readme_results.py           # print the tables
    .venv/bin/python scripts/readme_results.py --write   # put them into README.md, between the markers
    .venv/bin/python scripts/readme_results.py --check   # exit 1 if README.md's tables differ from the files

Each row names its results file and says in words what a figure of that file means, and which make target
reruns it (benchmarks/published.py's lane: `make bench` fits about 90 minutes on 2 cores, `make bench-all` runs
the rest); the rows are grouped into one table per machine (CPU model and instruction set, or GPU) that measured
them, so no table mixes machines.
`make bench` runs this after the benchmarks (benchmarks/run_all.py); tests/test_readme_results.py checks that
README.md holds exactly what the results files give.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BEGIN = "<!-- headline results: made by scripts/readme_results.py from benchmarks/results; do not edit by hand -->"
END = "<!-- end of headline results -->"
HEADER = "| what | result | page | rerun by |"

# How the README names the models of the results files.
MODEL_NAMES = {
    "resnet50": "ResNet-50", "mobilenet_v2": "MobileNetV2", "convnext_tiny": "ConvNeXt-T",
    "vit_small_patch16_224": "ViT-S", "efficientnet_b0": "EfficientNet-B0", "vit_l16": "ViT-L/16",
    "vit_b16": "ViT-B/16", "resnext50_32x4d": "ResNeXt-50", "convnextv2_atto": "ConvNeXtV2-atto",
    "vit_large_patch16_224": "ViT-L", "mobilenetv2_small": "MobileNetV2-small", "resnet20": "ResNet-20",
    "vit_tiny_fmnist": "ViT-tiny", "regnet_y_1_6gf": "RegNetY-1.6GF", "resnet101": "ResNet-101",
    "convnext_small": "ConvNeXt-S", "swin_t": "Swin-T", "vit_b_16": "ViT-B/16", "efficientnet_v2_s": "EfficientNetV2-S",
    "mobilenetv4_conv_medium": "MobileNetV4-M", "efficientnet_b1": "EfficientNet-B1",
    "mobilenet_v3_large": "MobileNetV3-L", "convnext_atto": "ConvNeXt-atto", "deit_small_patch16_224": "DeiT-S",
    "vit_tiny_patch16_224": "ViT-Ti",
}


def model_name(reference: str) -> str:
    """`torchvision:resnet50` -> ResNet-50."""
    bare = reference.split(":")[-1]
    return MODEL_NAMES.get(bare, bare)


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _benchmark_module(name: str):
    """A module of benchmarks/, imported as the benchmarks import each other."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


def lanes() -> dict[str, str]:
    """Results name -> the make target that reruns it (benchmarks/published.py)."""
    published = _benchmark_module("published")
    return {run.results: "`make bench`" if run.lane == "bench" else "`make bench-all`" for run in published.RUNS}


def points(fraction: float) -> str:
    """An accuracy difference (a fraction) in percentage points, signed."""
    return f"{100 * fraction:+.2f}"


def span(values: list[float], unit: str = "x") -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}{unit}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}{unit} to {high:.2f}{unit}"


# --- one function per row: the result cell, from the row's results file -----------------------------------

def prune_latency(data: dict) -> str:
    models = data["models"]
    ours = [model["variants"]["prunefx-global"]["latency"]["speedup"] for model in models]
    theirs = [model["variants"]["tp-default"]["latency"]["speedup"] for model in models]
    names = ", ".join(model_name(model["model"]) for model in models)
    return f"{span(ours)} on {names} (Torch-Pruning's default widths: {span(theirs)})"


def listed(names: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def latency_aware_choice(data: dict) -> str:
    by_model: dict[str, dict[str, dict]] = {}
    for row in data["equal_macs"]:
        by_model.setdefault(row["model"], {})[row["choice"]] = row
    # faster or slower where the two 90 % intervals are apart, level where they overlap
    faster = {model: rows for model, rows in by_model.items()
              if rows["latency"]["speedup_low"] > rows["macs"]["speedup_high"]}
    slower = [model_name(model) for model, rows in by_model.items()
              if rows["latency"]["speedup_high"] < rows["macs"]["speedup_low"]]
    even = [model_name(model) for model in by_model if model not in faster and model_name(model) not in slower]
    accuracy = f"on Fashion-MNIST at equal speed-up {_accuracy_counts(data['accuracy'], 'goal')} cases"
    if data.get("accuracy_at_macs"):
        accuracy += f", at equal MACs {_accuracy_counts(data['accuracy_at_macs'], 'macs')}"
    accuracy += ": MACs stay the default"
    rest = ((f", level on {listed(even)} (intervals overlapping)" if even else "")
            + (f", slower on {listed(slower)}" if slower else ""))
    if not faster:
        return f"at equal MACs faster on none of {len(by_model)} models{rest}; {accuracy}"
    best_model, best = max(faster.items(), key=lambda item: item[1]["latency"]["speedup"] / item[1]["macs"]["speedup"])
    return (f"at equal MACs faster on {len(faster)} of {len(by_model)} models ({model_name(best_model)} "
            f"{best['latency']['speedup']:.2f}x vs {best['macs']['speedup']:.2f}x){rest}; {accuracy}")


def _accuracy_counts(rows: list[dict], case: str) -> str:
    """'more accurate in 1, less accurate in 3 of 4': the latency choice's test accuracy against the MACs choice's in
    each (model, `case`), compared as the page shows them (two decimals of a percent)."""
    cases: dict[tuple, dict[str, float]] = {}
    for row in rows:
        cases.setdefault((row["model"], row[case]), {})[row["choice"]] = row["test_accuracy"]
    shown = [[round(100 * found[choice], 2) for choice in ("latency", "macs")] for found in cases.values()]
    counts = {"more accurate": sum(ours > theirs for ours, theirs in shown),
              "as accurate": sum(ours == theirs for ours, theirs in shown),
              "less accurate": sum(ours < theirs for ours, theirs in shown)}
    return ", ".join(f"{words} in {count}" for words, count in counts.items() if count) + f" of {len(cases)}"


def modelopt_side_by_side(data: dict) -> str:
    models = data["models"]
    ahead = sum(1 for model in models.values() if model["verdict"] == "prunefx >= ModelOpt")
    share = f"all {len(models)}" if ahead == len(models) else f"{ahead} of {len(models)}"
    return f"as many or more INT8 Conv/Gemm/MatMul and residual Adds with Q/DQ on {share} models"


def one_shot_accuracy(data: dict) -> str:
    dense = data["baselines"]["resnet20"]["test_accuracy"]
    half = [run for run in data["runs"] if run["model"] == "resnet20" and run["fraction"] == 0.5]
    ours = next(run["test_accuracy"] for run in half if run["variant"] == "+ second-order selection")  # the default
    theirs = max(run["test_accuracy"] for run in half if run["variant"].startswith("tp-"))
    return f"{100 * ours:.2f} % (Torch-Pruning {100 * theirs:.2f} %; dense {100 * dense:.2f} %)"


def fashion_mnist_accuracy(data: dict) -> str:
    leads = []
    for model in data["baselines"]:
        runs = [run for run in data["runs"] if run["model"] == model and run["fraction"] == 0.2]
        ours = max(run["test_accuracy"] for run in runs if run["variant"].startswith("prunefx"))
        theirs = max(run["test_accuracy"] for run in runs if run["variant"].startswith("tp-"))
        leads.append(ours - theirs)
    ahead = sum(1 for lead in leads if lead > 0)
    share = f"all {len(leads)}" if ahead == len(leads) else f"{ahead} of {len(leads)}"
    return f"most accurate on {share} models, {points(min(leads))} to {points(max(leads))} points over Torch-Pruning"


def int8_latency(data: dict) -> str:
    resnet = data["models"]["resnet50"]["variants"]
    lost = max(max(variants["fp32"]["accuracy"] - variants["int8"]["accuracy"],
                   variants["pruned fp32"]["accuracy"] - variants["pruned int8"]["accuracy"])
               for variants in (model["variants"] for model in data["fashion_mnist"].values()))
    return (f"ResNet-50 {resnet['int8']['speedup_vs_fp32']:.2f}x, pruned + INT8 "
            f"{resnet['pruned int8']['speedup_vs_fp32']:.2f}x; at most {100 * lost:.2f} point lost on Fashion-MNIST")


def dense_tasks(data: dict) -> str:
    dense = data["baselines"]["lraspp_mobilenetv3"]["test_miou"]
    runs = {run["variant"]: run for run in data["runs"] if run["model"] == "lraspp_mobilenetv3" and run["fraction"] == 0.5}
    ours, theirs = runs["prunefx-obs"], runs["tp-l2"]
    return (f"{ours['latency']['speedup']:.2f}x for {points(ours['test_miou'] - dense)} point mIoU "
            f"(Torch-Pruning: {points(theirs['test_miou'] - dense)})")


def detection_scenes(data: dict) -> str:
    dense = data["dense"]["test"]["map"]
    budget = [run for run in data["runs"] if run["variant"] == "prunefx-obs-budget"]
    longest = max(budget, key=lambda run: run["epochs"])
    return (f"{longest['latency']['speedup']:.2f}x for {points(longest['test']['map'] - dense)} points "
            f"mAP@[.5:.95] (budget, {longest['epochs']} epochs of KD)")


def sparsity_accuracy(data: dict) -> str:
    resnet20 = data["models"]["resnet20"]
    runs = resnet20["runs"]
    return (f"{100 * runs['cap_oneshot']['test_accuracy']:.2f} % with CAP against "
            f"{100 * runs['magnitude_oneshot']['test_accuracy']:.2f} % with magnitude "
            f"(dense {100 * resnet20['dense']['test_accuracy']:.2f} %)")


def depth_vs_channel(data: dict, model: str = "convnext_fmnist") -> str:
    dense = data["baselines"][model]["test_accuracy"]
    depth = [run for run in data["runs"] if run["model"] == model and run["variant"].startswith("depth")]
    least, most = min(depth, key=lambda run: run["merges"]), max(depth, key=lambda run: run["latency"]["speedup"])
    return (f"{least['latency']['speedup']:.2f}x for {points(least['test_accuracy'] - dense)} point; "
            f"{most['latency']['speedup']:.2f}x reachable at {points(most['test_accuracy'] - dense)}")


def tool_speed(data: dict) -> str:
    rows = {(row["model"], row["case"]): row for row in data["rows"]}

    def seconds(model: str, case: str) -> str:
        row = rows[(model, case)]
        if row["status"] != "ok":
            return f"{row['status']} at {row['wall_s']:.0f} s {case}"
        return f"{row['wall_s']:.1f} s {case} ({row['peak_per_model']:.1f}x its model's memory)"

    theirs = [row["wall_s"] for row in data["rows"] if row["case"] == "torch-pruning" and row["status"] == "ok"]
    repeat = data["settings"].get("repeat", 1)
    runs = "one run each" if repeat == 1 else f"median of {repeat} runs"
    return (f"{runs}: ResNet-50 {seconds('resnet50', 'uncalibrated')}, {seconds('resnet50', 'calibrated')}; "
            f"ViT-L/16 {seconds('vit_l16', 'uncalibrated')}, {seconds('vit_l16', 'calibrated')}, "
            f"{seconds('vit_l16', 'speedup').replace(' speedup', ' with `--speedup 2`')}; "
            f"Torch-Pruning {min(theirs):.1f} to {max(theirs):.1f} s, without export or parity")


def latency_budget(data: dict) -> str:
    runs = data["runs"]
    within = sum(1 for run in runs if run.get("within_target"))
    depth = [f"{model_name(run['model'])} {run['budget']:g}x through depth {run['independent']['speedup']:.2f}x"
             for run in runs if run.get("route") == "depth"]
    refused = sum(1 for run in runs if run.get("refused"))
    # a miss names its control pair: a control far from 1.00x says the machine moved during the check
    missed = [f"{model_name(run['model'])} {run['budget']:g}x read {run['independent']['speedup']:.2f}x beside a "
              f"control pair at {run['control']['speedup']:.2f}x" for run in runs
              if not run.get("refused") and not run.get("within_target")]
    others = ([f"{refused} refused in one line"] if refused else []) + ([f"missed: {', '.join(missed)}"] if missed else [])
    return (f"{within} of {len(runs)} land in [0.95 S, 1.25 S]" + "".join(f", {text}" for text in others)
            + "".join(f"; {text}" for text in depth))


def semi_structured_speedup(data: dict) -> str:
    layers, blocks = data["layers"], data["blocks"]
    eager = [row["speedup"] for row in layers + blocks]
    graphed = [row["graphed"]["speedup"] for row in layers if "graphed" in row]
    best = max((row for row in blocks if "graphed" in row), key=lambda row: row["graphed"]["speedup"])
    return (f"slower than dense when called eagerly ({span(eager)}); from a CUDA graph {span(graphed)} per layer, "
            f"{best['graphed']['speedup']:.2f}x at best for a {model_name(best['model'])} MLP block at batch "
            f"{best['batch']}")


def gpu_speedup(data: dict) -> str:
    rows = [row for row in data["equal_macs"] if row["batch"] == 32]
    ours = [row["prunefx"]["speedup"] for row in rows]
    rounded = [row for row in rows if "speedup" in row.get("torch-pruning r8", {})]
    failed = [model_name(row["model"]) for row in rows if row not in rounded]
    ahead = sum(1 for row in rounded if row["prunefx"]["speedup"] >= row["torch-pruning r8"]["speedup"])
    theirs = f"Torch-Pruning `round_to=8` {span([row['torch-pruning r8']['speedup'] for row in rounded])}"
    if failed:
        theirs += f", its search failed on {listed(failed)}"
    latency = [row for row in data["latency_choice"] if row["batch"] == 32]
    at_equal_macs = _benchmark_module("equal_macs").at_equal_macs
    equal = [row for row in latency if at_equal_macs(row["prunefx latency"]["macs_kept"], row["prunefx"]["macs_kept"])]
    faster = sum(1 for row in equal if row["prunefx latency"]["speedup"] > row["prunefx"]["speedup"])
    apart = [f"on {model_name(row['model'])} it kept {row['prunefx latency']['macs_kept']:.2f} of the MACs"
             for row in latency if row not in equal]
    return (f"defaults {span(ours)} on {len(rows)} models, at least Torch-Pruning's on {ahead} of {len(rounded)} "
            f"({theirs}); channels chosen by a latency table timed on the GPU faster than the MACs choice at "
            f"equal MACs on {faster} of {len(equal)} models timed"
            + (f" ({'; '.join(apart)}, not compared)" if apart else ""))


@dataclass(frozen=True)
class Row:
    what: str
    results: str  # benchmarks/results/RESULTS.json
    result: Callable[[dict], str]
    page: str  # link text and docs/benchmarks/PAGE.md

    def cells(self, rerun_by: dict[str, str]) -> list[str]:
        text, page = self.page.split("|")
        return [self.what, self.result(load(self.results)), f"[{text}](docs/benchmarks/{page}.md)",
                rerun_by[self.results]]


ROWS = (
    Row("Channel pruning to half the MACs, widths x16, ONNX Runtime", "prune_latency", prune_latency,
        "prune latency|prune-latency"),
    Row("Channels chosen by a per-layer latency table (`--choose-by latency`) against by MACs, ONNX Runtime",
        "latency_aware_choice", latency_aware_choice, "latency-aware choice|latency-aware-choice"),
    Row("TensorRT INT8 file against NVIDIA ModelOpt 0.47's ONNX PTQ", "modelopt_side_by_side", modelopt_side_by_side,
        "TensorRT readiness|tensorrt-readiness"),
    Row("One-shot pruning, no fine-tuning, half the MACs (ResNet-20, Fashion-MNIST)", "one_shot_accuracy",
        one_shot_accuracy, "one-shot accuracy|one-shot-accuracy"),
    Row("5x fewer MACs, one epoch of recovery", "fashion_mnist_accuracy", fashion_mnist_accuracy,
        "Fashion-MNIST accuracy|fashion-mnist-accuracy"),
    Row("INT8 on ONNX Runtime (PTQ)", "int8_latency", int8_latency, "INT8|int8"),
    Row("Segmentation, half the MACs (LR-ASPP MobileNetV3)", "dense_tasks", dense_tasks, "segmentation|segmentation"),
    Row("Detection, YOLOv8n trained with Ultralytics", "detection_scenes", detection_scenes, "detection|detection"),
    Row("2:4 sparsity, one-shot (ResNet-20)", "sparsity_accuracy", sparsity_accuracy, "sparsity|sparsity"),
    Row("Depth pruning (UPDP), ConvNeXt-style", "depth_vs_channel", depth_vs_channel, "depth|depth"),
    Row("Time and memory of `prunefx prune` to half the MACs at 224 px, one whole process (export and parity "
        "included)", "tool_speed", tool_speed, "tool speed|tool-speed"),
    Row("Latency budgets `--speedup 2` and `3` on 8 models (160 px), checked by an independent process",
        "latency_budget", latency_budget, "latency budgets|latency-budget"),
    Row("2:4 ViT MLP layers (cuSPARSELt, fp16)", "semi_structured_speedup", semi_structured_speedup,
        "sparsity|sparsity"),
    Row("Channel pruning to half the MACs, cuda backend (fp16, CUDA graphs), batch 32", "gpu_speedup", gpu_speedup,
        "GPU speed-ups|gpu-speedup"),
)


def machine_of(data: dict) -> str:
    """The machine a results file was measured on, as a table's heading says it."""
    machine = data.get("machine") or {}
    versions = machine.get("versions", {})
    gpu = (data.get("gpu") or {}).get("name") or machine.get("gpu")
    if gpu:
        return f"On one {gpu} (torch {versions.get('torch', '?')}):"
    isa = "AVX-512" if machine.get("avx512") else "AVX2" if machine.get("avx2") else "neither AVX2 nor AVX-512"
    runtime = ".".join(str(versions.get("onnxruntime", "?")).split(".")[:2])
    cpu = machine.get("cpu", "?").replace("(R)", "").replace("(TM)", "").removesuffix(" Processor")
    return (f"On a {machine.get('usable_cpus', '?')}-core {cpu} virtual machine with {isa} "
            f"(ONNX Runtime {runtime}, CPU):")


def tables() -> str:
    """The headline tables, one per machine, in the order of their first row."""
    by_machine: dict[str, list[list[str]]] = {}
    rerun_by = lanes()
    for row in ROWS:
        by_machine.setdefault(machine_of(load(row.results)), []).append(row.cells(rerun_by))
    parts = []
    for heading, rows in by_machine.items():
        lines = [HEADER, "|---|---|---|---|", *("| " + " | ".join(cells) + " |" for cells in rows)]
        parts += [heading, "", *lines, ""]
    return "\n".join(parts).rstrip("\n")


def readme_with(text: str, readme: str) -> str:
    """`readme` with the part between the markers replaced by `text`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no '{BEGIN}' ... '{END}' section")
    return readme[:start + len(BEGIN)] + "\n\n" + text + "\n\n" + readme[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite README.md's headline tables")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md's tables differ from the files")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(tables())
        return 0
    readme = README.read_text()
    updated = readme_with(tables(), readme)
    if args.write:
        README.write_text(updated)
    elif args.check:
        if updated != readme:
            print("README.md's headline tables differ from benchmarks/results: run scripts/readme_results.py --write",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
