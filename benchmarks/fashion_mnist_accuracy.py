"""fashion_mnist_accuracy: test accuracy after pruning and recovery, prunefx against Torch-Pruning.

On Fashion-MNIST (real data: 55,000 training images, 5,000 held out for validation, the 10,000 test
images only for the reported accuracy), for each model:
1. a dense baseline is trained here from scratch (`--baseline-epochs`: N, or MODEL=N for one model; cached in
   build/ by model and epochs);
2. it is pruned to each MACs fraction (0.5, 0.33, 0.2 of the dense MACs) by
   - tp-l2: Torch-Pruning, MagnitudeImportance(p=2), one uniform ratio (its default), found by
     bisection until prunefx's MAC counter says the target is met;
   - prunefx-l2: remove_channels, l2 importance, global ranking (normalised scores), round_to 4;
   - prunefx-obs: remove_channels, importance obs (the output error a channel's removal leaves after
     compensation) with compensate (least-squares update of the remaining weights), global ranking,
     round_to 4, on 512 training images, then recalibrate_batchnorm on the same images;
   - prunefx-cpd: prune_while_training (CPD: Fisher importance accumulated from the task + KD loss,
     cuts every `interval` steps during the first part of the budget, geometric schedule);
3. and recovered with the same budget (`--epochs`, same optimizer and schedule) with plain
   cross-entropy ("ce") or knowledge distillation from the dense model ("kd": KL of T=4 softened
   logits, kd_weight 0.9). prunefx-cpd always distils (distillation is part of the method).
Reported: test accuracy, MACs per image, and, with --latency, ONNX Runtime latency of every model
at batch 1 (rebatched from the training batch) against the dense one, alternated in one process, round by
round (`--rounds`: each round times every pruned model of a model in turn).

    .venv/bin/python benchmarks/fashion_mnist_accuracy.py [--models resnet20 ...] [--epochs 1]
    .venv/bin/python benchmarks/fashion_mnist_accuracy.py --report-only     # tables from cached runs

Every finished run is cached in build/fashion_mnist_accuracy/ (one JSON each), so an interrupted
benchmark resumes; results go to benchmarks/results/fashion_mnist_accuracy.{json,md} (with `--epochs N`
other than 1: fashion_mnist_accuracy_Nepochs.{json,md}, runs cached apart).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch_pruning as tp
from common import (
    BUILD,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    per_model_option,
    side_by_side,
    write_results,
)

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, capture, count
from prunefx.graph.rebatch import rebatch
from prunefx.graph.whole_files import write_whole
from prunefx.models import build_model
from prunefx.models.small.vit import Attention
from prunefx.passes.distill import distill
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.passes.training.engine import evaluate
from prunefx.runtime import export_onnx, onnx_runner

NAME = "fashion_mnist_accuracy"
CACHE = BUILD / NAME
MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
FRACTIONS = (0.5, 0.33, 0.2)
# variant -> (pruning method, recovery losses it is run with)
VARIANTS = {"tp-l2": ("tp", ("ce", "kd")), "prunefx-l2": ("prunefx", ("ce", "kd")), "prunefx-obs": ("obs", ("kd",)),
            "prunefx-cpd": ("cpd", ("kd",))}
CALIBRATION_BATCHES = 4  # 512 training images for prunefx-obs (as benchmarks/one_shot_accuracy.py)
BATCH = 128
TOLERANCE = 0.03
KD = {"kd_weight": 0.9, "temperature": 4.0}


def optimizer_settings(model: str, *, baseline: bool) -> dict:
    """SGD for the CNNs, AdamW for the ViT and ConvNeXt (the usual choices); the same for every tool."""
    if model.startswith(("vit", "convnext")):
        return {"optimizer": "adamw", "lr": 2e-3 if baseline else 5e-4, "weight_decay": 0.05, "momentum": 0.9}
    return {"optimizer": "sgd", "lr": 0.1 if baseline else 0.02, "weight_decay": 5e-4 if baseline else 1e-4,
            "momentum": 0.9}


# --- baseline ----------------------------------------------------------------------------------------

def baseline(model: str, data, args) -> tuple[Program, dict]:
    """The dense model trained for `args.baseline_epochs` (a number, or a number per model), cached by model and
    epochs: the benchmarks that share it (one-shot accuracy, sparsity, depth, latency-aware choice) each get the
    baseline their command asks for, whichever ran first."""
    epochs = args.baseline_epochs[model] if isinstance(args.baseline_epochs, dict) else args.baseline_epochs
    folder = CACHE / model
    path, info_path = folder / f"dense_{epochs}ep.pt2", folder / f"dense_{epochs}ep.json"
    if path.is_file() and info_path.is_file():
        return at_batch(model, Program.load(path).eval(), getattr(getattr(data, "train", None), "batch_size", None)), \
            json.loads(info_path.read_text())
    torch.manual_seed(args.seed)
    program = capture(build_model(f"prunefx:{model}").module, next(iter(data.train))[0], name=model)
    print(f"[{model}] training the dense baseline for {epochs} epochs", file=sys.stderr)
    started = time.perf_counter()
    # Checkpoints every 200 steps: an interrupted benchmark resumes the baseline where it stopped.
    result = distill(program, config={"data": data.train, "epochs": epochs, "kd_weight": 0.0,
                                     "warmup_steps": len(data.train) // 2, "progress": True, "seed": args.seed,
                                     "checkpoint_dir": folder / f"baseline_checkpoint_{epochs}ep",
                                     "checkpoint_every": 200, "resume": True,
                                     **optimizer_settings(model, baseline=True)})
    program, stats = result.program.eval(), result.stats
    info = {"epochs": epochs, "seconds": time.perf_counter() - started,
            "test_accuracy": evaluate(program, data.test)["accuracy"],
            "val_accuracy": evaluate(program, data.val)["accuracy"], "train_loss": stats["train_loss"],
            "macs_per_image": count(program).macs // BATCH, "params": count(program).params}
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path)
    write_whole(info_path, json.dumps(info, indent=1))
    return program, info


def at_batch(model: str, program: Program, batch: int | None) -> Program:
    """A cached baseline at the batch size of the data it will be calibrated on (the benchmark that trained it may
    have batched otherwise): cut out of the graph where smaller, captured again with its weights where larger."""
    cached = int(program.example_inputs[0].shape[0])
    if not batch or batch == cached:
        return program
    if batch < cached:
        return rebatch(program, batch)
    example = torch.zeros(batch, *program.example_inputs[0].shape[1:])
    return capture(eager_copy(model, program), example, name=program.name).eval()


# --- pruning -----------------------------------------------------------------------------------------

def eager_copy(model: str, dense: Program) -> torch.nn.Module:
    """The eager model with the dense program's weights (Torch-Pruning works on eager modules)."""
    module = build_model(f"prunefx:{model}").module
    module.load_state_dict(dense.module.state_dict())
    return module.eval()


def tp_prune(module: torch.nn.Module, example: torch.Tensor, ratio: float) -> torch.nn.Module:
    module = copy.deepcopy(module)
    classifier = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10]
    heads = {m.qkv: m.heads for m in module.modules() if isinstance(m, Attention)}
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  global_pruning=False, pruning_ratio=ratio, ignored_layers=classifier,
                                  num_heads=heads, prune_head_dims=True, prune_num_heads=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    for m in module.modules():
        if isinstance(m, Attention):
            m.heads = pruner.num_heads[m.qkv]
    return module.eval()


def torch_pruning(model: str, dense: Program, fraction: float) -> Program:
    """Bisection on Torch-Pruning's uniform ratio until the MACs meet the target."""
    eager, example = eager_copy(model, dense), dense.example_inputs[0]
    dense_macs = count(dense).macs
    low, high, best = 0.0, 0.95, None
    for _ in range(14):
        ratio = 0.5 * (low + high)
        program = capture(tp_prune(eager, example, ratio), example, name=model).eval()
        kept = count(program).macs / dense_macs
        if best is None or abs(kept - fraction) < abs(best[1] - fraction):
            best = (program, kept)
        if abs(kept - fraction) <= 0.005 * fraction:
            break
        low, high = (ratio, high) if kept > fraction else (low, ratio)
    return best[0]


def recovery_config(model: str, loss: str, data, args) -> dict:
    return {"data": data.train, "epochs": args.epochs, "warmup_steps": 50, "progress": True, "seed": args.seed,
            **optimizer_settings(model, baseline=False), **(KD if loss == "kd" else {"kd_weight": 0.0})}


def prune_and_recover(model: str, variant: str, loss: str, fraction: float, dense: Program, data, args) -> dict:
    method = VARIANTS[variant][0]
    started = time.perf_counter()
    teacher = dense.clone().eval()
    if method == "cpd":
        program = dense.clone()
        steps = args.epochs * len(data.train)
        events = 5
        interval = max(steps * 2 // 5 // events, 1)  # cuts during the first 40 % of the budget
        result = prune_while_training(program, config={
            **recovery_config(model, loss, data, args), "teacher": teacher, "macs": fraction, "round_to": 4,
            "prune_events": events, "interval": interval})
        program, training = result.program, result.stats["training"]
    else:
        if method == "tp":
            program = torch_pruning(model, dense, fraction)
        elif method == "obs":
            program = second_order_prune(dense, fraction, data)
        else:
            program = dense.clone()
            remove_channels(program, config={"macs": fraction, "importance": "l2", "ranking": "global",
                                             "round_to": 4})
        one_shot = evaluate(program, data.test)["accuracy"]
        result = distill(program, config={**recovery_config(model, loss, data, args), "teacher": teacher})
        program, training = result.program, result.stats
    program.eval()
    macs = count(program).macs / count(dense).macs
    entry = {"model": model, "variant": variant, "loss": loss, "fraction": fraction, "macs_kept": macs,
             "macs_target_met": abs(macs - fraction) <= TOLERANCE * fraction,
             "macs_per_image": count(program).macs // BATCH, "params": count(program).params,
             "test_accuracy": evaluate(program, data.test)["accuracy"],
             "one_shot_test_accuracy": None if method == "cpd" else one_shot,
             "epochs": args.epochs, "train_seconds": training.get("train_seconds"),
             "seconds": time.perf_counter() - started}
    program.save(CACHE / model / f"{run_stem(variant, loss, fraction, args.epochs)}.pt2")
    return entry


def second_order_prune(dense: Program, fraction: float, data) -> Program:
    """obs selection + compensation on calibration images, then their batch-norm statistics."""
    calibration = [(inputs,) for inputs, _ in itertools.islice(iter(data.train), CALIBRATION_BATCHES)]
    program = dense.clone().eval()
    remove_channels(program, config={"macs": fraction, "importance": "obs", "compensate": True,
                                     "calibration": calibration, "ranking": "global", "round_to": 4})
    return recalibrate_batchnorm(program, config={"data": calibration}).program


# --- latency -----------------------------------------------------------------------------------------

def latency(model: str, entries: list[dict], dense: Program, args) -> None:
    """Batch-1 ONNX Runtime latency of each pruned model against the dense one, all of them round by round
    (common.side_by_side: `--rounds` rounds sharing `--runs` timed calls a side, the speed-up pooled over them with
    its interval)."""
    workdir = CACHE / model / "onnx"
    dense_onnx = export_onnx(rebatch(dense, 1), workdir / "dense.onnx")
    example = (dense.example_inputs[0][:1],)
    dense_runner = onnx_runner(dense_onnx.path, example, threads=args.threads)
    runners = {}
    for index, entry in enumerate(entries):
        name = run_stem(entry["variant"], entry["loss"], entry["fraction"], entry["epochs"])
        pruned = rebatch(Program.load(CACHE / model / f"{name}.pt2").eval(), 1)
        runners[index] = onnx_runner(export_onnx(pruned, workdir / f"{name}.onnx").path, example,
                                     threads=args.threads)
    timed = side_by_side(dense_runner, runners, rounds=args.rounds, runs=max(args.runs // args.rounds, 10),
                         threads=args.threads)
    for index, entry in enumerate(entries):
        entry["latency"] = timed[index]


# --- report ------------------------------------------------------------------------------------------

def run_stem(variant: str, loss: str, fraction: float, epochs: int) -> str:
    """The cache name of one run; budgets other than one epoch are cached apart."""
    return f"{variant}_{loss}_{fraction}" + ("" if epochs == 1 else f"_{epochs}ep")


def run_file(model: str, variant: str, loss: str, fraction: float, epochs: int) -> Path:
    return CACHE / model / f"{run_stem(variant, loss, fraction, epochs)}.json"


def results_name(epochs: int) -> str:
    """One results file per recovery budget: fashion_mnist_accuracy (1 epoch), ..._3epochs."""
    return NAME if epochs == 1 else f"{NAME}_{epochs}epochs"


def _speedup_statistic(runs: list[dict]) -> str:
    """How the file's speed-ups were computed, as its records hold them: pooled with an interval (`confidence`), or,
    in a file made before the script pooled its rounds, the median of the rounds' own speed-ups."""
    timed = [run["latency"] for run in runs if run.get("latency")]
    if timed and all("confidence" in latency for latency in timed):
        return ("the speed-up is pooled over the rounds (the ratio of the medians of all their runs, as `prunefx "
                "bench --vs` gives it), with its 90 % interval (Student's t over the rounds)")
    return "the speed-up is the median of the rounds' own speed-ups, with no interval"


def markdown(report: dict) -> str:
    lines = ["# Fashion-MNIST: accuracy after pruning and recovery, prunefx and Torch-Pruning\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             f"- Recovery budget: {report['epochs']} epoch(s) of the 55,000 training images, batch {BATCH}, "
             "the same optimizer and schedule for every tool (SGD lr 0.02 cosine for CNNs, AdamW 5e-4 for the ViT, "
             "50 warm-up steps); `kd`: distillation from the dense model (kd_weight 0.9, T = 4), `ce`: "
             "cross-entropy only.",
             "- Accuracy on the 10,000 test images, never used for any choice; one run per cell (seed 0).",
             "- Latency: ONNX Runtime, batch 1, 2 threads, median, each model alternated with the dense one, all of "
             f"them round by round; {_speedup_statistic(report['runs'])}.\n"]
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense {100 * info['test_accuracy']:.2f} % (trained here for {info['epochs']} "
                     f"epochs, {info['macs_per_image'] / 1e6:.1f} M MACs)\n")
        rows = []
        for e in sorted((e for e in report["runs"] if e["model"] == model),
                        key=lambda e: (-e["fraction"], e["variant"], e["loss"])):
            speed = e.get("latency", {}).get("speedup")
            one_shot = e.get("one_shot_test_accuracy")
            rows.append([f"{e['fraction']:g}", e["variant"], e["loss"], f"{e['macs_kept']:.3f}",
                         "-" if one_shot is None else f"{100 * one_shot:.2f}",
                         f"**{100 * e['test_accuracy']:.2f}**",
                         f"{100 * (e['test_accuracy'] - info['test_accuracy']):+.2f}",
                         "-" if speed is None else f"{speed:.2f}x{interval_cell(e['latency'])}"])
        lines.append(markdown_table(["MACs target", "variant", "recovery", "MACs kept", "one-shot %",
                                     "test % after recovery", "vs dense (points)", "ORT speed-up"], rows))
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=1, help="recovery budget in epochs (default 1)")
    parser.add_argument("--baseline-epochs", nargs="+", default=["8"], metavar="[MODEL=]N",
                        help="dense training epochs: N for every model, or MODEL=N (default 8)")
    parser.add_argument("--latency", action="store_true",
                        help="also time in ONNX Runtime every model not timed yet (its run file keeps the figures)")
    parser.add_argument("--remeasure", action="store_true", help="time every model again, timed before or not")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5,
                        help="latency: rounds that time every pruned model against the dense one, runs split among them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only build the tables from cached runs")
    args = parser.parse_args(argv)
    args.baseline_epochs = per_model_option(parser, args.baseline_epochs, MODELS, "--baseline-epochs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = fashion_mnist_data(BATCH, validation=5000, seed=args.seed)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "epochs": args.epochs,
              "baselines": {}, "runs": []}
    for model in args.models:
        if args.report_only and not (CACHE / model / "dense.json").is_file():
            continue
        dense, report["baselines"][model] = baseline(model, data, args)
        entries = []
        for fraction in args.fractions:
            for variant in args.variants:
                for loss in VARIANTS[variant][1]:
                    path = run_file(model, variant, loss, fraction, args.epochs)
                    if path.is_file():
                        entries.append(json.loads(path.read_text()))
                    elif not args.report_only:
                        print(f"[{model}] {variant} {loss} at {fraction} of the MACs", file=sys.stderr)
                        entry = prune_and_recover(model, variant, loss, fraction, dense, data, args)
                        write_whole(path, json.dumps(entry, indent=1))
                        entries.append(entry)
        if args.latency or args.remeasure:
            untimed = [e for e in entries if args.remeasure or "latency" not in e]
            latency(model, untimed, dense, args)
            for entry in untimed:
                write_whole(run_file(model, entry["variant"], entry["loss"], entry["fraction"], args.epochs),
                            json.dumps(entry, indent=1))
        report["runs"] += entries
    json_path, md_path = write_results(results_name(args.epochs), report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
