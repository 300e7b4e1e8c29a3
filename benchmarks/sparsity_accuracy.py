"""sparsity_accuracy: 2:4 sparsity on Fashion-MNIST, magnitude vs OBS vs CAP, one-shot and after KD fine-tuning.

The trained dense ResNet-20 and MobileNetV2-small of the distillation benchmark (benchmarks/fashion_mnist_accuracy.py,
cached in build/fashion_mnist_accuracy/MODEL/ by epochs; trained there if missing) are made 2:4 sparse by
sparsify_nm with each criterion:
- magnitude: the 2 largest |w| of every 4 input channels, no data;
- obs: SparseGPT-style second order on the layer-input Hessians of the calibration images (sequential);
- cap: CAP's correlation-aware elimination on empirical-Fisher blocks (B = 64) from per-image
  gradients of the cross-entropy on the labelled calibration images;
all with the same calibration data: the first `--calibration-batches` training batches (128 images
each, as `prunefx compress` injects them). Then each is fine-tuned for `--epochs` with knowledge
distillation from the dense model (kd_weight 0.9, T = 4; SGD, `--lr`, 50 warm-up steps, cosine), the
2:4 masks held fixed by distill (passes/rewrites/sparse_masks.py). Reported: test accuracy (10,000 images, never
used for a choice) one-shot and after fine-tuning, and a check that every sparsified weight still obeys
2:4 after fine-tuning.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_accuracy.py [--models resnet20] [--variants magnitude obs cap] \
        [--baseline-epochs 8 mobilenetv2_small=4]
    .venv/bin/python benchmarks/sparsity_accuracy.py --report-only          # tables from cached runs
    .venv/bin/python benchmarks/sparsity_accuracy.py --one-shot-only        # skip fine-tuning

Runs are cached in build/sparsity_accuracy/ (one JSON per variant and stage); results go to
benchmarks/results/sparsity_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from common import (
    BUILD,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    per_model_option,
    write_results,
)
from fashion_mnist_accuracy import BATCH, KD, baseline, recovery_config

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program
from prunefx.graph.attributes import get_tensor
from prunefx.graph.sparsity.nm_masks import Pattern, pattern_violations
from prunefx.graph.whole_files import write_whole
from prunefx.passes.distill import distill
from prunefx.passes.sparsify_nm import sparsify_nm
from prunefx.passes.training.engine import evaluate

NAME = "sparsity_accuracy"
CACHE = BUILD / NAME
MODELS = ("resnet20", "mobilenetv2_small")  # the trained models of fashion_mnist_accuracy.py
VARIANTS = ("magnitude", "obs", "cap")
PATTERN = "2:4"


def run_file(model: str, variant: str, stage: str) -> Path:
    return CACHE / model / f"{variant}_{stage}.json"


def violations(program: Program) -> int:
    """M-groups breaking the pattern over every weight the program records as sparse."""
    pattern = Pattern.parse(program.analysis.sparsity.pattern)
    return sum(pattern_violations(get_tensor(program.module, name), pattern)
               for name in program.analysis.sparsity.weights)


def one_shot(model: str, variant: str, dense: Program, calibration: list, data) -> dict:
    program = dense.clone()
    started = time.perf_counter()
    result = sparsify_nm(program, config={"pattern": PATTERN, "criterion": variant, "calibration": calibration})
    seconds = time.perf_counter() - started
    program.save(CACHE / model / f"{variant}_oneshot.pt2")
    stats = result.stats
    errors = [layer["relative_output_error"] for layer in stats["layers"] if "relative_output_error" in layer]
    return {"variant": variant, "stage": "one-shot", "test_accuracy": evaluate(program, data.test)["accuracy"],
            "val_accuracy": evaluate(program, data.val)["accuracy"], "sparsify_seconds": seconds,
            "layers_sparsified": len(stats["weights"]), "layers_skipped": stats["skipped"],
            "zero_fraction": stats["zero_fraction"], "damping": stats["damping"], "violations": violations(program),
            "mean_relative_output_error": sum(errors) / len(errors) if errors else None}


def fine_tune(model: str, variant: str, dense: Program, data, args) -> dict:
    program = Program.load(CACHE / model / f"{variant}_oneshot.pt2")
    started = time.perf_counter()
    config = {**recovery_config(model, "kd", data, args), "lr": args.lr, "teacher": dense.clone().eval()}
    result = distill(program, config=config)
    program = result.program.eval()
    program.save(CACHE / model / f"{variant}_kd.pt2")
    return {"variant": variant, "stage": "kd", "test_accuracy": evaluate(program, data.test)["accuracy"],
            "val_accuracy": evaluate(program, data.val)["accuracy"], "epochs": args.epochs, "lr": args.lr,
            "train_seconds": result.stats["train_seconds"], "seconds": time.perf_counter() - started,
            "violations": violations(program), "zero_fraction": _zero_fraction(program)}


def _skipped(runs: dict) -> str:
    """The layers left dense and why, from the one-shot runs (the same layers for every criterion)."""
    skipped = next((run["layers_skipped"] for run in runs.values() if run.get("layers_skipped") is not None), None)
    if not skipped:
        return "no layer left dense"
    counts: dict[str, int] = {}
    for layer in skipped:
        reason = layer["reason"].split(" (")[0].split(":")[0]
        counts[reason] = counts.get(reason, 0) + 1
    return "left dense: " + "; ".join(f"{n} x {reason}" for reason, n in counts.items())


def _zero_fraction(program: Program) -> float:
    tensors = [get_tensor(program.module, name) for name in program.analysis.sparsity.weights]
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def markdown(report: dict) -> str:
    lines = ["# Fashion-MNIST: 2:4 sparsity, magnitude vs OBS vs CAP\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             f"- Models trained here (benchmarks/fashion_mnist_accuracy.py); 2:4 along input channels on every eligible "
             f"layer; calibration: {report['calibration_images']} training images (with labels for CAP's gradients).",
             "- Damping: OBS 0.01 of the mean Hessian diagonal (SparseGPT's default); CAP 1e-3 of the mean Fisher "
             "diagonal, blocks of 64 (the pass's default, chosen on the validation split among 1e-1..1e-4, one-shot).",
             f"- Fine-tuning: {report['epochs']} epoch(s), KD from the dense model (kd_weight 0.9, T = 4), SGD lr "
             f"{report['lr']} cosine, 50 warm-up steps, batch {BATCH}; masks held fixed.",
             "- Test accuracy on the 10,000 test images, never used for any choice; one run per cell (seed 0).\n"]
    for model, entry in report["models"].items():
        dense = entry["dense"]
        lines += [f"## {model} ({dense['epochs']} epochs, dense test accuracy {100 * dense['test_accuracy']:.2f} %; "
                  f"{entry['skipped']})\n", markdown_table(["criterion", "one-shot test %", "vs dense", "after KD test %",
                                                           "vs dense", "zeros (eligible)", "mean layer error (obs)",
                                                           "sparsify s", "2:4 holds"], _rows(entry)), ""]
    return "\n".join(lines) + "\n"


def _rows(entry: dict) -> list[list[str]]:
    dense, rows = entry["dense"], []
    for variant in VARIANTS:
        shot, tuned = entry["runs"].get(f"{variant}_oneshot"), entry["runs"].get(f"{variant}_kd")
        if shot is None:
            continue
        error = shot.get("mean_relative_output_error")
        rows.append([variant, f"{100 * shot['test_accuracy']:.2f}",
                     f"{100 * (shot['test_accuracy'] - dense['test_accuracy']):+.2f}",
                     "-" if tuned is None else f"**{100 * tuned['test_accuracy']:.2f}**",
                     "-" if tuned is None else f"{100 * (tuned['test_accuracy'] - dense['test_accuracy']):+.2f}",
                     f"{shot['zero_fraction']:.3f}", "-" if error is None else f"{error:.4f}",
                     f"{shot['sparsify_seconds']:.0f}",
                     "yes" if shot["violations"] == 0 and (tuned is None or tuned["violations"] == 0) else "NO"])
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=1, help="KD fine-tuning epochs (default 1)")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--baseline-epochs", nargs="+", default=["8"], metavar="[MODEL=]N",
                        help="epochs of the dense baselines, N or MODEL=N (default 8; only used when one is missing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-shot-only", action="store_true", help="skip fine-tuning")
    parser.add_argument("--report-only", action="store_true", help="only build the tables from cached runs")
    args = parser.parse_args(argv)
    args.baseline_epochs = per_model_option(parser, args.baseline_epochs, args.models, "--baseline-epochs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=5000, seed=args.seed)
    calibration = list(itertools.islice(iter(data.train), args.calibration_batches))
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "epochs": args.epochs,
              "lr": args.lr, "calibration_images": len(calibration) * BATCH, "kd": KD, "models": {}}
    for model in args.models:
        report["models"][model] = run_model(model, calibration, data, args)
    json_path, md_path = write_results(NAME, report, markdown(report))
    print(md_path.read_text())
    return 0


def run_model(model: str, calibration: list, data, args) -> dict:
    """One model's dense baseline and every criterion's runs (each read from its cache when there)."""
    dense, info = baseline(model, data, args)
    entry = {"dense": info, "runs": {}}
    stages = ("oneshot",) if args.one_shot_only else ("oneshot", "kd")
    for stage in stages:  # every one-shot first: the cheap half of the table comes early
        for variant in args.variants:
            path = run_file(model, variant, stage)
            if path.is_file():
                entry["runs"][f"{variant}_{stage}"] = json.loads(path.read_text())
                continue
            if args.report_only:
                continue
            print(f"[{model}] {variant}: {stage}", file=sys.stderr, flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            found = (one_shot(model, variant, dense, calibration, data) if stage == "oneshot"
                     else fine_tune(model, variant, dense, data, args))
            write_whole(path, json.dumps(found, indent=1))
            entry["runs"][f"{variant}_{stage}"] = found
    entry["skipped"] = _skipped(entry["runs"])
    return entry


if __name__ == "__main__":
    sys.exit(main())
