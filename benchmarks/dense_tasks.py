"""dense_tasks: segmentation on Fashion-MNIST scenes, mIoU and ONNX Runtime latency after pruning, prunefx
against Torch-Pruning (issue 19: CPD's task-agnostic claim, measured).

Data: Fashion-MNIST scenes (prunefx/data/fashion_mnist_scenes.py, `--data fashion-mnist-seg:SIZE`): canvases of
`--size` pixels (64 by default: these machines have 2 shared cores) holding 2-6 real Fashion-MNIST items,
11 classes (background + 10); train canvases from training items, validation canvases from 5,000
held-out training items, test canvases (the reported mIoU) from the test items only.

For each model:
1. a dense baseline is trained here (`--baseline-epochs`: N for every model, or MODEL=N entries, AdamW,
   cached in build/dense_tasks/; the validation mIoU after each epoch is recorded, to see it plateau);
2. it is pruned to each MACs fraction (0.5 and 0.33 of the dense MACs) by
   - prunefx-obs: remove_channels with importance obs + compensate (least-squares update of the kept
     weights) on 4 calibration batches, recalibrate_batchnorm, then distill (per-pixel KD);
   - prunefx-cpd: prune_while_training (CPD: Fisher importance from the task + KD loss, 5 cuts during
     the first 40 % of the budget), which goes on distilling to the end of the budget;
   - tp-l2: Torch-Pruning MetaPruner, MagnitudeImportance(p=2), uniform ratio found by bisection until
     prunefx's MAC counter meets the target, then the same distill;
   every variant keeps widths multiples of `--round-to` (16: ONNX Runtime's blocked kernels on AVX-512)
   and gets the same recovery budget (`--epochs`, AdamW, per-pixel KD from the dense model: kd_weight
   0.9, T = 4);
3. scored on the test canvases (mIoU, torchmetrics) and timed in ONNX Runtime at batch 1 against the
   dense model, alternated in one process, every pruned model of a network in each round;
4. with `--int8`, each prunefx-obs run is also quantized (passes/quantize_int8 at its defaults, calibrated
   on the first 4 training batches), lowered for ONNX Runtime on this CPU the way `prunefx quantize` does
   (runtime/onnx/quantized: export_quantized_onnx with onnxruntime_lowering()), its test mIoU read from that
   file run by ONNX Runtime at batch 1, and the file timed against the dense FP32 model as in 3 ("prunefx-obs
   + int8" rows; a model that fails to quantize or lower has its one-line error as the result).

    .venv/bin/python benchmarks/dense_tasks.py --models unet_mobilenetv2 [--fractions 0.5 0.33] [--latency]
    .venv/bin/python benchmarks/dense_tasks.py --report-only [--int8]

Every finished run is cached in build/dense_tasks/ (one JSON each); results go to
benchmarks/results/dense_tasks.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning as tp
from common import (
    BUILD,
    REPO,
    Key,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    side_by_side,
    write_results,
)

from prunefx.assets import mobilenet_v2_weights_path
from prunefx.data.load import load_data
from prunefx.dense_tasks import SegmentationScore, evaluate_dense
from prunefx.graph import Program, capture, count
from prunefx.graph.errors import first_line
from prunefx.graph.rebatch import rebatch
from prunefx.graph.whole_files import write_whole
from prunefx.passes.distill import distill
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import OnnxRuntimeSession, export_onnx, onnx_runner
from prunefx.runtime.onnx.quantized import QuantizedExport, export_quantized_onnx, onnxruntime_lowering

NAME = "dense_tasks"
CACHE = BUILD / NAME
FRACTIONS = (0.5, 0.33)
VARIANTS = ("prunefx-obs", "prunefx-cpd", "tp-l2")
CALIBRATION_BATCHES = 4
TOLERANCE = 0.03
KD = {"kd_weight": 0.9, "temperature": 4.0}
NUM_CLASSES = 11
INT8 = " + int8"  # the variant of a quantized run: "prunefx-obs + int8"
TARGET_SPEEDUP, TARGET_DROP = 1.9, 0.015  # issue 19: >= 1.9x for at most 1.5 points of mIoU


# --- models ------------------------------------------------------------------------------------------

def lraspp_mobilenetv3() -> torch.nn.Module:
    """torchvision LR-ASPP MobileNetV3-Large, from scratch (no offline ImageNet MobileNetV3 weights)."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)


def unet_mobilenetv2() -> torch.nn.Module:
    """segmentation-models-pytorch U-Net whose MobileNetV2 encoder starts from torchvision's ImageNet
    weights (read from the offline package, never downloaded)."""
    import segmentation_models_pytorch as smp

    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=NUM_CLASSES)
    state = torch.load(mobilenet_v2_weights_path(), weights_only=True)
    model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    return model


def segformer_mit_b0() -> torch.nn.Module:
    """segmentation-models-pytorch SegFormer (MiT-B0 transformer encoder), from scratch."""
    import segmentation_models_pytorch as smp

    return smp.Segformer("mit_b0", encoder_weights=None, classes=NUM_CLASSES)


MODELS = {"lraspp_mobilenetv3": lraspp_mobilenetv3, "unet_mobilenetv2": unet_mobilenetv2,
          "segformer_mit_b0": segformer_mit_b0}


def training(args, *, baseline: bool) -> dict:
    return {"optimizer": "adamw", "lr": args.baseline_lr if baseline else args.lr, "weight_decay": 1e-4,
            "momentum": 0.9, "progress": True, "seed": args.seed}


def run_folder(model: str, args):
    """Where a model's dense baseline and pruned runs are cached: one folder per data and dense-training
    setting, so that a run never reuses a baseline trained on other canvases or for another budget."""
    return args.cache / (f"{model}_{args.size}px_{args.train}c_b{args.batch}_{args.baseline_epochs[model]}ep_"
                    f"lr{args.baseline_lr:g}_s{args.seed}")


def miou(program: Program, data) -> float:
    return evaluate_dense(program, data.test, task="segmentation", num_classes=NUM_CLASSES)["miou"]


# --- baseline ----------------------------------------------------------------------------------------

def baseline(model: str, data, args) -> tuple[Program, dict]:
    folder = run_folder(model, args)
    path, info_path = folder / "dense.pt2", folder / "dense.json"
    if path.is_file() and info_path.is_file():
        return Program.load(path).eval(), json.loads(info_path.read_text())
    torch.manual_seed(args.seed)
    program = capture(MODELS[model]().eval(), next(iter(data.train))[0], name=model)
    epochs = args.baseline_epochs[model]
    print(f"[{model}] training the dense baseline for {epochs} epochs", file=sys.stderr)
    val_miou = []  # after each epoch (epochs of a run resumed from a checkpoint are missing)

    def score_epoch(trainer, step):
        if step % len(data.train) == 0:
            val_miou.append(evaluate_dense(trainer.program, data.val, task="segmentation",
                                           num_classes=NUM_CLASSES)["miou"])
            print(f"[{model}] epoch {step // len(data.train)}: val mIoU {100 * val_miou[-1]:.2f}", file=sys.stderr)
            # written as it goes: a run stopped early (a short rerun) still leaves its trajectory behind
            write_whole(folder / "dense_progress.json", json.dumps({"val_miou_by_epoch": val_miou,
                                                                    "seconds": time.perf_counter() - started}))

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    result = distill(program, config={"data": data.train, "epochs": epochs, "kd_weight": 0.0,
                                     "warmup_steps": 20, "checkpoint_dir": folder / "baseline_checkpoint",
                                     "checkpoint_every": 50, "resume": True, "after_step": [score_epoch],
                                     **training(args, baseline=True)})
    program = result.program.eval()
    info = {"epochs": epochs, "lr": args.baseline_lr, "seconds": time.perf_counter() - started,
            "test_miou": miou(program, data), "val_miou_by_epoch": val_miou,
            "macs_per_image": count(program).macs // args.batch, "params": count(program).params}
    folder.mkdir(parents=True, exist_ok=True)
    program.save(path)
    write_whole(info_path, json.dumps(info, indent=1))
    return program, info


# --- pruning -----------------------------------------------------------------------------------------

def tp_prune(module: torch.nn.Module, example: torch.Tensor, ratio: float, round_to: int) -> torch.nn.Module:
    module = copy.deepcopy(module)
    heads = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == NUM_CLASSES]
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  global_pruning=False, pruning_ratio=ratio, ignored_layers=heads,
                                  round_to=round_to,
                                  output_transform=lambda out: out["out"] if isinstance(out, dict) else out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    return module.eval()


def torch_pruning(model: str, dense: Program, fraction: float, round_to: int) -> Program:
    """Bisection on Torch-Pruning's uniform ratio until prunefx's MAC counter meets the target."""
    eager = MODELS[model]()
    eager.load_state_dict(dense.module.state_dict())
    eager.eval()
    example, dense_macs = dense.example_inputs[0], count(dense).macs
    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = 0.5 * (low + high)
        program = capture(tp_prune(eager, example, ratio, round_to), example, name=model).eval()
        kept = count(program).macs / dense_macs
        if best is None or abs(kept - fraction) < abs(best[1] - fraction):
            best = (program, kept)
        if abs(kept - fraction) <= 0.01 * fraction:
            break
        low, high = (ratio, high) if kept > fraction else (low, ratio)
    return best[0]


def prune_and_recover(model: str, variant: str, fraction: float, dense: Program, data, args) -> dict:
    started = time.perf_counter()
    teacher = dense.clone().eval()
    recovery = {"data": data.train, "epochs": args.epochs, "warmup_steps": 10, "teacher": teacher, **KD,
                **training(args, baseline=False)}
    one_shot = None
    if variant == "prunefx-cpd":
        steps = args.epochs * len(data.train)
        events = 5
        result = prune_while_training(dense.clone(), config={
            **recovery, "macs": fraction, "round_to": args.round_to, "prune_events": events,
            "interval": max(steps * 2 // 5 // events, 1)})  # cuts during the first 40 % of the budget
        program, stats = result.program, result.stats["training"]
    else:
        if variant == "tp-l2":
            program = torch_pruning(model, dense, fraction, args.round_to)
        else:
            calibration = [(x,) for x, _ in itertools.islice(iter(data.train), CALIBRATION_BATCHES)]
            program = dense.clone().eval()
            remove_channels(program, config={"macs": fraction, "importance": "obs", "compensate": True,
                                             "calibration": calibration, "ranking": "global",
                                             "round_to": args.round_to})
            program = recalibrate_batchnorm(program, config={"data": calibration}).program
        one_shot = miou(program.eval(), data)
        result = distill(program, config=recovery)
        program, stats = result.program, result.stats
    program.eval()
    macs = count(program).macs / count(dense).macs
    entry = {"model": model, "variant": variant, "fraction": fraction, "macs_kept": macs,
             "macs_target_met": abs(macs - fraction) <= TOLERANCE * fraction,
             "macs_per_image": count(program).macs // args.batch, "params": count(program).params,
             "test_miou": miou(program, data), "one_shot_test_miou": one_shot, "epochs": args.epochs,
             "train_seconds": stats.get("train_seconds"), "seconds": time.perf_counter() - started}
    program.save(run_folder(model, args) / f"{run_stem(variant, fraction, args.epochs)}.pt2")
    return entry


# --- latency -----------------------------------------------------------------------------------------

def dense_runner(model: str, dense: Program, args):
    example = (dense.example_inputs[0][:1],)
    path = export_onnx(rebatch(dense, 1), run_folder(model, args) / "onnx" / "dense.onnx").path
    return onnx_runner(path, example, threads=args.threads)


def timed_together(dense_run, runners: dict[Key, Callable[[], object]], args) -> dict[Key, dict]:
    """Each of `runners` against the dense model in `--repeats` rounds, every round timing all of them in turn
    (common.side_by_side): one comparison on this shared machine spreads by +-0.2x, so the speed-up is pooled over
    the rounds as the runtime pools it, with its interval over the rounds and the range, and a slow spell reaches
    every variant alike."""
    load_before = os.getloadavg()[0]
    results = side_by_side(dense_run, runners, rounds=args.repeats, runs=args.runs, threads=args.threads)
    load = [load_before, os.getloadavg()[0]]
    return {name: {**result, "speedups": sorted(result["round_speedups"]), "threads": args.threads,
                   "runs": args.runs, "repeats": args.repeats, "load_average_1min": load}
            for name, result in results.items()}


def timed(dense_run, runner, args) -> dict:
    """timed_together for one model against the dense one."""
    return timed_together(dense_run, {"pruned": runner}, args)["pruned"]


def latency(model: str, entries: list[dict], dense: Program, args) -> None:
    """Batch-1 ONNX Runtime latency of each pruned model against the dense one, alternated, all round by round."""
    folder = run_folder(model, args)
    example = (dense.example_inputs[0][:1],)
    dense_run = dense_runner(model, dense, args)
    runners = {}
    for index, entry in enumerate(entries):
        stem = run_stem(entry["variant"], entry["fraction"], entry["epochs"])
        pruned = rebatch(Program.load(folder / f"{stem}.pt2").eval(), 1)
        runners[index] = onnx_runner(export_onnx(pruned, folder / "onnx" / f"{stem}.onnx").path, example,
                                     threads=args.threads)
    for index, result in timed_together(dense_run, runners, args).items():
        entries[index]["latency"] = result


# --- INT8 --------------------------------------------------------------------------------------------

def quantized_for_onnxruntime(pt2: Path, onnx_path: Path, train, batches: int) -> tuple[QuantizedExport, dict]:
    """The Program saved at `pt2`, at batch 1, quantized at quantize_int8's defaults (calibrated on every image
    of the first `batches` batches of `train`) and lowered for ONNX Runtime on this CPU as `prunefx quantize`
    does, written to `onnx_path`: the export, and what the report says of it."""
    program = rebatch(Program.load(pt2).eval(), 1)
    calibration = [(x[i:i + 1],) for x, _ in itertools.islice(iter(train), batches) for i in range(len(x))]
    stats = quantize_int8(program, config={"calibration": calibration}).stats
    lowering = onnxruntime_lowering()
    exported = export_quantized_onnx(program, onnx_path, activations=lowering)
    return exported, {"quantized_layers": len(stats["quantized"]), "float_layers": len(stats["skipped"]),
                      "lowering": lowering, "integer_units": exported.integer_units,
                      "integer_matmuls": exported.integer_matmuls,
                      "float_convolution_inputs": exported.float_convolution_inputs}


def int8(model: str, entry: dict, dense: Program, data, args) -> dict:
    """The pruned run of `entry` quantized (quantize_int8's defaults, calibrated on the first
    CALIBRATION_BATCHES training batches) and lowered for ONNX Runtime on this CPU, as `prunefx quantize`
    does; its test mIoU is that file's, run by ONNX Runtime at batch 1, and it is timed against the dense
    FP32 model. A failure is recorded as its one-line error."""
    started = time.perf_counter()
    folder, stem = run_folder(model, args), run_stem(entry["variant"], entry["fraction"], entry["epochs"])
    result = {"model": model, "variant": entry["variant"] + INT8, "fraction": entry["fraction"],
              "macs_kept": entry["macs_kept"], "epochs": entry["epochs"], "fp32_test_miou": entry["test_miou"],
              "command": command_line()}
    try:
        exported, facts = quantized_for_onnxruntime(folder / f"{stem}.pt2", folder / "onnx" / f"{stem}_int8.onnx",
                                                    data.train, CALIBRATION_BATCHES)
        session = OnnxRuntimeSession(exported.path, threads=args.threads)
        score = SegmentationScore(NUM_CLASSES)
        for x, masks in data.test:
            for i in range(len(x)):
                score.update(torch.from_numpy(session.run(x[i:i + 1])[0]), masks[i:i + 1])
        result.update({"test_miou": score.compute()["miou"], **facts})
        result["latency"] = timed(dense_runner(model, dense, args),
                                  onnx_runner(exported.path, (x[:1],), threads=args.threads), args)
    except Exception as error:  # the failure is the result (e.g. a layer the lowering cannot take)
        result.update({"error": first_line(error), "test_miou": float("nan")})
    result["seconds"] = time.perf_counter() - started
    return result


# --- report ------------------------------------------------------------------------------------------

def run_stem(variant: str, fraction: float, epochs: int) -> str:
    return f"{variant}_{fraction}_{epochs}ep"


def run_file(model: str, variant: str, fraction: float, args) -> object:
    """`<stem>.json`; a quantized run's ("prunefx-obs + int8") is its pruned run's `<stem>_int8.json`."""
    pruned = variant.removesuffix(INT8)
    suffix = "_int8" if pruned != variant else ""
    return run_folder(model, args) / f"{run_stem(pruned, fraction, args.epochs)}{suffix}.json"


def verdict(entry: dict, dense_miou: float) -> str:
    speed = entry.get("latency", {}).get("speedup")
    if speed is None:
        return "not timed"
    drop = dense_miou - entry["test_miou"]
    met = speed >= TARGET_SPEEDUP and drop <= TARGET_DROP
    return "met" if met else f"missed ({speed:.2f}x, {100 * drop:+.2f} pt drop)"


def target_lines(model: str, runs: list[dict], dense_miou: float) -> list[str]:
    """The issue's two segmentation targets for one model, met or missed with the gaps."""
    ok = [e for e in runs if "error" not in e]
    timed = [e for e in ok if "speedup" in e.get("latency", {})]
    lines = []
    meeting = [e for e in timed if verdict(e, dense_miou) == "met"]
    if meeting:
        best = max(meeting, key=lambda e: e["latency"]["speedup"])
        lines.append(f"- >= {TARGET_SPEEDUP}x for <= {100 * TARGET_DROP:.1f} points of mIoU: **met** by "
                     + ", ".join(f"{e['variant']} at {e['fraction']:g}" for e in meeting)
                     + f" (best {best['latency']['speedup']:.2f}x, {100 * (best['test_miou'] - dense_miou):+.2f} points).")
    elif timed:
        fast = [e for e in timed if e["latency"]["speedup"] >= TARGET_SPEEDUP]
        accurate = [e for e in timed if dense_miou - e["test_miou"] <= TARGET_DROP]
        parts = []
        if fast:
            e = max(fast, key=lambda e: e["test_miou"])
            parts.append(f"the most accurate run at >= {TARGET_SPEEDUP}x, {e['variant']} at {e['fraction']:g}, loses "
                         f"{100 * (dense_miou - e['test_miou']):.2f} points ({100 * (dense_miou - e['test_miou'] - TARGET_DROP):.2f} "
                         "over the target)")
        if accurate:
            e = max(accurate, key=lambda e: e["latency"]["speedup"])
            parts.append(f"the fastest run within {100 * TARGET_DROP:.1f} points, {e['variant']} at {e['fraction']:g}, "
                         f"reaches {e['latency']['speedup']:.2f}x")
        if not parts:
            e = max(timed, key=lambda e: e["test_miou"])
            parts.append(f"no run reaches {TARGET_SPEEDUP}x nor stays within {100 * TARGET_DROP:.1f} points; the most "
                         f"accurate, {e['variant']} at {e['fraction']:g}: {e['latency']['speedup']:.2f}x, "
                         f"{100 * (e['test_miou'] - dense_miou):+.2f} points")
        lines.append(f"- >= {TARGET_SPEEDUP}x for <= {100 * TARGET_DROP:.1f} points of mIoU: **missed**: " + "; ".join(parts) + ".")
    else:
        lines.append(f"- >= {TARGET_SPEEDUP}x for <= {100 * TARGET_DROP:.1f} points of mIoU: not timed.")
    for fraction in sorted({e["fraction"] for e in runs}, reverse=True):
        tp_run = next((e for e in runs if e["fraction"] == fraction and e["variant"] == "tp-l2"), None)
        ours = [e for e in ok if e["fraction"] == fraction and e["variant"] != "tp-l2"
                and not e["variant"].endswith(INT8)]  # FP32 against FP32
        if not ours:
            continue
        best = max(ours, key=lambda e: e["test_miou"])
        if tp_run is None:
            lines.append(f"- prunefx >= Torch-Pruning at {fraction:g} of the MACs: Torch-Pruning not run.")
        elif "error" in tp_run:
            lines.append(f"- prunefx >= Torch-Pruning at {fraction:g} of the MACs: Torch-Pruning failed "
                         f"({tp_run['error'][:200]}); prunefx's best {100 * best['test_miou']:.2f}.")
        else:
            gap = 100 * (best["test_miou"] - tp_run["test_miou"])
            lines.append(f"- prunefx >= Torch-Pruning at {fraction:g} of the MACs: **{'met' if gap >= 0 else 'missed'}**: "
                         f"{best['variant']} {100 * best['test_miou']:.2f} against tp-l2 {100 * tp_run['test_miou']:.2f} "
                         f"({gap:+.2f} points; MACs kept {best['macs_kept']:.3f} and {tp_run['macs_kept']:.3f}).")
    return lines


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# Segmentation on Fashion-MNIST scenes: mIoU and ONNX Runtime speed-up, prunefx and Torch-Pruning\n",
             f"Produced by `{report['command']}`.\n", machine_summary(report["machine"]), "",
             f"- Data: `fashion-mnist-seg:{settings['size']}`, {settings['train']} train canvases (training items), "
             f"{settings['val']} validation canvases (held-out training items), {settings['test']} test canvases "
             "(test items; the reported mIoU), 11 classes, batch "
             f"{settings['batch']}."
             + (f" Read from {report['data_path']}." if "data_path" in report else ""),
             "- Dense training: " + ", ".join(f"{model} {settings['baseline_epochs'][model]}"
                                              for model in report["baselines"])
             + f" epochs, AdamW lr {settings['baseline_lr']:g} (20 warm-up steps, cosine), cross-entropy; "
             "trained once and cached.",
             f"- Recovery budget: {report['epochs']} epoch(s) for every variant, AdamW lr {settings['lr']:g} cosine, per-pixel KD "
             "from the dense model (kd_weight 0.9, T = 4); widths rounded to multiples of "
             f"{settings['round_to']} for every tool.",
             f"- Latency: ONNX Runtime, batch 1, {settings['threads']} thread(s), each model alternated with the dense "
             f"one, {settings['runs']} runs each, in {settings['repeats']} rounds, each comparing every model of "
             "a network in turn; ms the medians over the rounds, the speed-up their ratio with its 90 % interval "
             "(Student's t over the rounds, as `prunefx bench --vs` states one; range of the rounds in brackets). "
             "Target (issue 19): >= 1.9x for at most 1.5 points of mIoU.\n"]
    if any(e["variant"].endswith(INT8) for e in report["runs"]):
        lines[-1:-1] = [f"- INT8 (`--int8`): each prunefx-obs run quantized by passes/quantize_int8 (defaults: mse "
                        f"activation ranges, per-channel weights) on its first {CALIBRATION_BATCHES} training batches, "
                        "lowered for ONNX Runtime on this CPU as `prunefx quantize` does (export_quantized_onnx, "
                        "onnxruntime_lowering()); its mIoU is the INT8 .onnx file's, run by ONNX Runtime at batch 1 on "
                        "the test canvases, its ms and speed-up that file's against the dense FP32 model."]
    for model, info in report["baselines"].items():
        lines.append(f"## {model}: dense mIoU {100 * info['test_miou']:.2f} (trained here for {info['epochs']} "
                     f"epochs, {info['macs_per_image'] / 1e6:.1f} M MACs per image)\n")
        lines.append(" ".join(MODELS[model].__doc__.split()) + "\n")  # which model, and how it starts
        if info.get("val_miou_by_epoch"):
            lines.append("Validation mIoU after each dense epoch: "
                         + ", ".join(f"{100 * v:.2f}" for v in info["val_miou_by_epoch"]) + ".\n")
        rows = []
        for e in sorted((e for e in report["runs"] if e["model"] == model),
                        key=lambda e: (-e["fraction"], e["variant"])):
            lat = e.get("latency", {})
            one_shot = e.get("one_shot_test_miou")
            if "error" in e:  # the error itself is listed under the table
                rows.append([f"{e['fraction']:g}", e["variant"], *["failed"] * 7])
                continue
            rows.append([f"{e['fraction']:g}", e["variant"], f"{e['macs_kept']:.3f}",
                         "-" if one_shot is None else f"{100 * one_shot:.2f}", f"**{100 * e['test_miou']:.2f}**",
                         f"{100 * (e['test_miou'] - info['test_miou']):+.2f}",
                         "-" if "pruned_ms" not in lat else f"{lat['dense_ms']:.2f} / {lat['pruned_ms']:.2f}",
                         "-" if "speedup" not in lat else f"{lat['speedup']:.2f}x{interval_cell(lat)}"
                         + (f" ({min(lat['speedups']):.2f}-{max(lat['speedups']):.2f})" if "speedups" in lat else ""),
                         verdict(e, info["test_miou"])])
        lines.append(markdown_table(["MACs target", "variant", "MACs kept", "one-shot mIoU", "mIoU after recovery",
                                     "vs dense (points)", "ORT ms dense / pruned", "speed-up", "target"], rows))
        lines.append("")
        runs = [e for e in report["runs"] if e["model"] == model]
        for e in runs:
            if "error" in e:
                lines.append(f"- {e['variant']} at {e['fraction']:g} failed: `{e['error']}`")
            else:
                lat = e.get("latency", {})
                load = lat.get("load_average_1min")
                quantized = e["variant"].endswith(INT8)
                done_in = (f"{e['quantized_layers']} layers quantized, {e['float_layers']} kept in float, "
                           f"{e['lowering']} lowering ({e['integer_units']} integer units, {e['integer_matmuls']} "
                           f"integer matmuls, {e['float_convolution_inputs']} float convolution inputs); "
                           f"{e['seconds'] / 60:.1f} min to quantize, lower, score and time"
                           if quantized else f"{e['seconds'] / 60:.1f} min to prune and recover")
                lines.append(f"- {e['variant']} at {e['fraction']:g}: {done_in}"
                             + (f"; load average (1 min) {load[0]:.1f} / {load[1]:.1f} before / after timing"
                                if load else "")
                             + (f"; {'made' if quantized else 'trained'} by `{e['command']}`" if "command" in e else ""))
        done = {(e["variant"], e["fraction"]) for e in runs}
        lines += [f"- {variant} at {fraction:g}: not run (no cached result)"
                  for fraction, variant in itertools.product(settings["fractions"], settings["variants"])
                  if (variant, fraction) not in done]
        lines += ["", "Targets (issue 19):", "", *target_lines(model, runs, info["test_miou"]), ""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet_mobilenetv2"], choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels (default 64)")
    parser.add_argument("--train", type=int, default=2000, help="training canvases (default 2000)")
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="recovery budget in epochs (default 1)")
    parser.add_argument("--baseline-epochs", nargs="+", default=["2"], metavar="[MODEL=]N",
                        help="dense training epochs: N for every model, MODEL=N for one (default 2)")
    parser.add_argument("--baseline-lr", type=float, default=3e-3, help="dense training AdamW lr (default 3e-3)")
    parser.add_argument("--lr", type=float, default=5e-4, help="recovery AdamW lr (default 5e-4)")
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--latency", action="store_true", help="time in ONNX Runtime every model not timed yet")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="alternating comparisons per model (default 5)")
    parser.add_argument("--retime", action="store_true", help="time again the models already timed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads (default 1: more than the free cores slows training 10x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true",
                        help="also quantize each prunefx-obs run (INT8 PTQ, ONNX Runtime lowering), score and time it; "
                             "done even with --report-only (nothing is trained)")
    parser.add_argument("--report-only", action="store_true", help="only build the tables from cached runs")
    parser.add_argument("--results-name", default=NAME,
                        help=f"results file stem under benchmarks/results (default {NAME}; a shorter rerun takes another)")
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help=f"where runs are cached (default {CACHE.relative_to(REPO)}; a rerun beside a run in "
                             "progress takes another)")
    args = parser.parse_args(argv)
    args.baseline_epochs = baseline_epochs(parser, args.baseline_epochs)
    return args


def baseline_epochs(parser, values: list[str]) -> dict[str, int]:
    """`--baseline-epochs 3 lraspp_mobilenetv3=15` -> {every model: 3, but lraspp_mobilenetv3: 15}."""
    epochs = dict.fromkeys(MODELS, 2)
    for value in sorted(values, key=lambda v: "=" in v):  # N first, then the models' own
        model, _, number = value.rpartition("=")
        if (model and model not in MODELS) or not number.isdigit() or int(number) < 1:
            parser.error(f"--baseline-epochs: {value!r} is neither N nor MODEL=N (models: {', '.join(MODELS)})")
        epochs.update({model: int(number)} if model else dict.fromkeys(MODELS, int(number)))
    return epochs


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(f"fashion-mnist-seg:{args.size}", args.batch, train_canvases=args.train,
                     val_canvases=args.val, test_canvases=args.test, seed=args.seed)
    settings = {key: getattr(args, key) for key in ("size", "train", "val", "test", "batch", "round_to", "threads",
                                                    "baseline_epochs", "baseline_lr", "lr", "runs", "repeats", "fractions",
                                                    "variants")}
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "epochs": args.epochs,
              "settings": settings, "baselines": {}, "runs": [],
              "data_path": f"train {data.train!r}; test {data.test!r}"}  # the files and loader the figures came from
    for model in args.models:
        if args.report_only and not (run_folder(model, args) / "dense.json").is_file():
            continue
        dense, report["baselines"][model] = baseline(model, data, args)
        entries = []
        for fraction, variant in itertools.product(args.fractions, args.variants):
            path = run_file(model, variant, fraction, args)
            if path.is_file():
                entries.append(json.loads(path.read_text()))
            elif not args.report_only:
                print(f"[{model}] {variant} at {fraction} of the MACs", file=sys.stderr)
                try:
                    entry = prune_and_recover(model, variant, fraction, dense, data, args)
                except Exception as error:  # a tool that fails is recorded with its error, not hidden
                    entry = {"model": model, "variant": variant, "fraction": fraction, "error": str(error)[:500],
                             "macs_kept": float("nan"), "test_miou": float("nan"), "epochs": args.epochs}
                entry["command"] = command_line()  # the process that trained it (runs may be split by variant)
                write_whole(path, json.dumps(entry, indent=1))
                entries.append(entry)
        if args.latency:
            untimed = [e for e in entries if (args.retime or "latency" not in e) and "error" not in e]
            latency(model, untimed, dense, args)
            for entry in untimed:
                write_whole(run_file(model, entry["variant"], entry["fraction"], args), json.dumps(entry, indent=1))
        if args.int8:
            for entry in [e for e in entries if e["variant"] == "prunefx-obs" and "error" not in e]:
                path = run_file(model, entry["variant"] + INT8, entry["fraction"], args)
                if not path.is_file():
                    print(f"[{model}] INT8 of {entry['variant']} at {entry['fraction']}", file=sys.stderr)
                    write_whole(path, json.dumps(int8(model, entry, dense, data, args), indent=1))
                entries.append(json.loads(path.read_text()))
        report["runs"] += entries
    json_path, md_path = write_results(args.results_name, report, markdown(report))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
