"""detection_scenes: YOLOv8n trained on Fashion-MNIST scenes, pruned by prunefx and by Torch-Pruning, mAP and
ONNX Runtime latency side by side (issue 19, detection).

Data: Fashion-MNIST scenes (prunefx/data/fashion_mnist_scenes.py, the `fashion-mnist-det:SIZE` split of
prunefx/data/splits.py): canvases of `--size` pixels holding 2-6 real Fashion-MNIST items, 10 classes, a tight box
per item; train canvases from training items, validation canvases from 5,000 held-out training items, test
canvases (the reported mAP) from the test items only. They are written to build/detection_scenes/ in the
YOLO folder layout (PNG images, one `class cx cy w h` line per box; prunefx/data/scene_files.py); Ultralytics
and prunefx both read them from there, prunefx through the reader users' YOLO data takes
(prunefx/data/yolo.py, streamed by DataLoader workers).

1. Dense: YOLOv8n (Ultralytics' yolov8n.yaml, 10 classes) trained from scratch by Ultralytics' own trainer
   (`YOLO.train`, its default augmentation and optimizer, `--yolo-epochs`), cached. Its test mAP is computed
   twice: by prunefx (torchmetrics' COCO mAP on the exported graph's decoded output, NMS at IoU 0.7, score
   0.001) and by Ultralytics' own validator on the same test canvases: the second is the independent check
   of the first.
2. Pruned to each MACs fraction (of the dense model, counted by prunefx for every tool), widths multiples of
   16, the 16 DFL bins of the head kept (softmax inputs):
   - prunefx-l2: remove_channels, L2 importance, global ranking;
   - prunefx-obs: remove_channels, OBS importance + least-squares compensation on calibration batches,
     batch norms recalibrated;
   - prunefx-obs-local (on request): the same with the same fraction removed from every group;
   - prunefx-obs-budget (on request): no MACs target; prune_to_budget searches the kept MACs with OBS +
     compensation until the model measures `--speedup` faster in ONNX Runtime (batch 1, `--threads`),
     every candidate timed against the dense model, as `prunefx prune --speedup S` does;
   - prunefx-cpd: prune_while_training (CPD): Fisher importance from the distillation loss, 5 cuts in the
     first 40 % of the recovery steps, the rest of the recovery budget training the final width;
   - tp-l2: Torch-Pruning's MetaPruner with MagnitudeImportance(p=2), its documented YOLOv8 recipe (C2f
     blocks split into two convolutions, the Detect head ignored), uniform ratio found by bisection.
   Every variant gets the same recovery: `--epochs` of distillation from the dense model (prunefx's trainer,
   task "detection": Bernoulli KL of the class scores + teacher-weighted box L1 on the decoded output; no ground-truth
   loss, which would need Ultralytics' assigner on the raw training-mode head), AdamW.
3. Scored on the test canvases (mAP@[.5:.95] and mAP@.5) and timed in ONNX Runtime at batch 1 against the
   dense model, alternated in one process, `--repeats` rounds each timing every model in turn (the speed-up
   pooled over the rounds with its 90 % interval, as `prunefx bench --vs` states one; the range).
4. With `--int8`, every finished prunefx-obs* run is also quantized (passes/quantize_int8 at its defaults,
   calibrated on the first 4 training batches) and lowered for ONNX Runtime on this CPU as `prunefx quantize`
   does (export_quantized_onnx with onnxruntime_lowering()); its mAP is that INT8 file's, run by ONNX Runtime
   at batch 1, and it is timed against the dense FP32 model ("<variant> + int8" rows; a failure to quantize
   or lower is recorded as its one-line error).

    .venv/bin/python benchmarks/detection_scenes.py [--fractions 0.5 0.33] [--variants ...]
    .venv/bin/python benchmarks/detection_scenes.py --report-only [--int8]

Every finished run is cached in build/detection_scenes/ (one JSON each); results go to
benchmarks/results/detection_scenes.{json,md}. Ultralytics is AGPL-3.0: a benchmark dependency only.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from common import (
    BUILD,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    write_results,
)
from dense_tasks import quantized_for_onnxruntime, timed, timed_together

from prunefx.data import fashion_mnist
from prunefx.data.fashion_mnist_scenes import SceneConfig
from prunefx.data.formats import format_data
from prunefx.data.scene_data import compose_scenes
from prunefx.data.scene_files import write_scenes
from prunefx.data.splits import DETECTION
from prunefx.dense_tasks import decode_yolo, evaluate_dense
from prunefx.detectors import softmax_nodes
from prunefx.graph import Program, capture, count
from prunefx.graph.errors import first_line
from prunefx.graph.rebatch import rebatch
from prunefx.graph.whole_files import write_whole
from prunefx.models import ultralytics_detector
from prunefx.passes.distill import distill
from prunefx.passes.prune_to_budget import prune_to_budget
from prunefx.passes.prune_while_training import prune_while_training
from prunefx.passes.recalibrate_batchnorm import recalibrate_batchnorm
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import OnnxRuntimeSession, export_onnx, onnx_runner
from prunefx.runtime.measure.speedup import onnx_latency_pair

NAME = "detection_scenes"
CACHE = BUILD / NAME
FRACTIONS = (0.5, 0.33)
VARIANTS = ("prunefx-l2", "prunefx-obs", "prunefx-cpd", "tp-l2")
LOCAL_VARIANT = "prunefx-obs-local"  # the same fraction of every group, as Torch-Pruning's uniform ratio
BUDGET_VARIANT = "prunefx-obs-budget"  # no MACs target: the measured speed-up `--speedup` is the target
INT8 = " + int8"  # the variant of a quantized run: "prunefx-obs + int8"
CPD_EVENTS = 5
CALIBRATION_BATCHES = 4
TOLERANCE = 0.03
ROUND_TO = 16
NUM_CLASSES = len(fashion_mnist.CLASSES)
TARGET_SPEEDUP, TARGET_DROP = 1.8, 0.02  # issue 19: >= 1.8x for at most 2 points of mAP@[.5:.95]
# Ultralytics scales pixels to [0, 1] and nothing else: the scenes' gray channel, repeated for RGB.
YOLO_INPUT = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
VALIDATION = 5000  # training items held out for the val canvases (fashion-mnist-det's default)


# --- data ----------------------------------------------------------------------------------------------

def data_folder(args) -> Path:
    return CACHE / f"scenes_{args.size}px_{args.train}-{args.val}-{args.test}c_s{args.seed}"


def yolo_dataset(args) -> Path:
    """The fashion-mnist-det scenes written once in Ultralytics' layout (prunefx/data/scene_files.py): the data
    yaml that both Ultralytics and prunefx read (val and test splits named)."""
    folder = data_folder(args)
    yaml = folder / "data.yaml"
    if not yaml.is_file():
        counts = {"train": args.train, "val": args.val, "test": args.test}
        config = SceneConfig(size=args.size)
        write_scenes(compose_scenes(counts, VALIDATION, config, args.seed), folder, "yolo")
    return yaml


def scenes(yaml: Path, args):
    """The scenes read back from the YOLO files by prunefx's own reader (the path users' data takes), fed
    to the model as Ultralytics feeds it (pixels / 255, RGB)."""
    return format_data(yaml, args.batch, data_format="yolo", channels=3, seed=args.seed, mean_std=YOLO_INPUT)


# --- dense ---------------------------------------------------------------------------------------------

def dense_folder(args) -> Path:
    return data_folder(args) / f"yolov8n_{args.yolo_epochs}ep_b{args.yolo_batch}"


def train_dense(yaml: Path, args) -> Path:
    """Ultralytics' own trainer, from scratch, its defaults otherwise; returns the best checkpoint."""
    from ultralytics import YOLO

    best = dense_folder(args) / "train" / "weights" / "best.pt"
    if best.is_file() and _epochs_done(best) >= args.yolo_epochs:  # best.pt is written every epoch, not at the end
        return best
    print(f"[yolov8n] Ultralytics training for {args.yolo_epochs} epochs", file=sys.stderr)
    YOLO("yolov8n.yaml").train(data=str(yaml), imgsz=args.size, epochs=args.yolo_epochs, batch=args.yolo_batch,
                               device="cpu", workers=2, plots=False, amp=False, seed=args.seed,
                               project=str(dense_folder(args)), name="train", exist_ok=True, verbose=False)
    return best


def _epochs_done(best: Path) -> int:
    """How many epochs Ultralytics finished (results.csv: a row at each epoch's end)."""
    results = best.parent.parent / "results.csv"
    return max(len(results.read_text().strip().splitlines()) - 1, 0) if results.is_file() else 0


def ultralytics_train_seconds(best: Path) -> float:
    """Ultralytics' own record of its training time (results.csv: cumulative seconds at each epoch's end)."""
    import csv

    with open(best.parent.parent / "results.csv", newline="") as rows:
        return float(list(csv.DictReader(rows))[-1]["time"])


def ultralytics_test_map(best: Path, yaml: Path, args) -> dict:
    """Ultralytics' validator on the test canvases: the check on prunefx's own mAP of the dense model."""
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(data=str(yaml), split="test", imgsz=args.size, batch=args.yolo_batch,
                                  device="cpu", plots=False, verbose=False, conf=0.001, iou=0.7,
                                  project=str(dense_folder(args)), name="val_test", exist_ok=True)
    return {"map": float(metrics.box.map), "map_50": float(metrics.box.map50)}


def scores(program: Program, data) -> dict:
    result = evaluate_dense(program, data.test, task=DETECTION, num_classes=NUM_CLASSES)
    return {"map": result["map"], "map_50": result["map_50"]}


def ultralytics_protocol_scores(program: Program, data) -> dict:
    """prunefx's mAP under Ultralytics' validation protocol (every class above the threshold counts per box,
    300 detections per image): the figure to hold against Ultralytics' own validator."""
    decode = functools.partial(decode_yolo, multi_label=True, max_detections=300)
    result = evaluate_dense(program, data.test, task=DETECTION, num_classes=NUM_CLASSES, decode=decode)
    return {"map": result["map"], "map_50": result["map_50"]}


def dense_program(data, yaml: Path, args) -> tuple[Program, dict]:
    folder = dense_folder(args)
    path, info_path = folder / "dense.pt2", folder / "dense.json"
    if path.is_file() and info_path.is_file():
        program, info = Program.load(path).eval(), json.loads(info_path.read_text())
        if "test_ultralytics_protocol" not in info:  # added after the first dense run: computed once, cached
            info["test_ultralytics_protocol"] = ultralytics_protocol_scores(program, data)
            write_whole(info_path, json.dumps(info, indent=1))
        return program, info
    best = train_dense(yaml, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's note about the anchors Ultralytics assigns in forward
        program = capture(ultralytics_detector(str(best)), next(iter(data.train))[0], name="yolov8n").eval()
    info = {"epochs": args.yolo_epochs, "batch": args.yolo_batch, "train_seconds": ultralytics_train_seconds(best),
            "test": scores(program, data), "test_ultralytics_protocol": ultralytics_protocol_scores(program, data),
            "ultralytics_test": ultralytics_test_map(best, yaml, args),
            "macs_per_image": count(program).macs // args.batch, "params": count(program).params}
    program.save(path)
    write_whole(info_path, json.dumps(info, indent=1))
    return program, info


# --- pruning and recovery --------------------------------------------------------------------------------

def prunefx_prune(dense: Program, variant: str, fraction: float | None, data, args) -> Program:
    program = dense.clone().eval()
    ranking = "local" if variant == LOCAL_VARIANT else "global"
    config = {"round_to": ROUND_TO, "ranking": ranking, "keep": softmax_nodes(dense)}
    if variant == "prunefx-l2":
        remove_channels(program, config={**config, "macs": fraction, "importance": "l2"})
        return program
    calibration = [(x,) for x, _ in itertools.islice(iter(data.train), CALIBRATION_BATCHES)]
    config = {**config, "importance": "obs", "compensate": True, "calibration": calibration}
    if variant == BUDGET_VARIANT:  # prunefx prune --speedup S: candidates timed against the dense model
        program = prune_to_budget(program, config={**config, "speedup": args.speedup,
                                                   "latency": onnx_latency_pair(threads=args.threads)}).program
    else:
        remove_channels(program, config={**config, "macs": fraction})
    return recalibrate_batchnorm(program, config={"data": calibration}).program.eval()


def tp_prune(dense: Program, fraction: float, args) -> tuple[Program, dict]:
    """Torch-Pruning's YOLOv8 recipe as benchmarks/detector_pruning.py runs it, on the trained weights."""
    from detector_pruning import prune_torch_pruning

    eager = ultralytics_detector(str(dense_folder(args) / "train" / "weights" / "best.pt"))
    example = dense.example_inputs[0]
    program, details = prune_torch_pruning(eager, example, fraction, count(dense).macs, args.tp_seconds)
    return program, {key: details[key] for key in ("pruning_ratio", "split_c2f_max_abs_error")}


def recovery(dense: Program, data, epochs: int, args) -> dict:
    return {"data": data.train, "epochs": epochs, "teacher": dense.clone().eval(), "task": DETECTION,
            "kd_weight": 1.0, "optimizer": "adamw", "lr": args.lr, "weight_decay": 1e-4, "warmup_steps": 10,
            "progress": True, "seed": args.seed}


def cpd_config(dense: Program, fraction: float, epochs: int, data, args) -> dict:
    """CPD with the recovery's budget: CPD_EVENTS cuts during the first 40 % of the steps (as
    benchmarks/dense_tasks.py schedules it), the DFL bins kept."""
    steps = epochs * len(data.train)
    return {**recovery(dense, data, epochs, args), "macs": fraction, "round_to": ROUND_TO, "ranking": "global",
            "keep": softmax_nodes(dense), "prune_events": CPD_EVENTS,
            "interval": max(steps * 2 // 5 // CPD_EVENTS, 1)}


def prune_and_recover(variant: str, fraction: float, epochs: int, dense: Program, data, args) -> dict:
    started = time.perf_counter()
    details = {}
    if variant == "prunefx-cpd":
        result = prune_while_training(dense.clone(), config=cpd_config(dense, fraction, epochs, data, args))
        program, prune_seconds, one_shot = result.program.eval(), None, None
        stats = result.stats["training"]
    else:
        if variant == "tp-l2":
            program, details = tp_prune(dense, fraction, args)
        else:
            program = prunefx_prune(dense, variant, fraction, data, args)
        prune_seconds = time.perf_counter() - started
        one_shot = scores(program.eval(), data)
        result = distill(program, config=recovery(dense, data, epochs, args))
        program, stats = result.program.eval(), result.stats
    macs = count(program).macs / count(dense).macs
    entry = {"variant": variant, "fraction": fraction, "macs_kept": macs,
             "macs_target_met": fraction is None or abs(macs - fraction) <= TOLERANCE * fraction,
             "speedup_budget": args.speedup if variant == BUDGET_VARIANT else None,
             "macs_per_image": count(program).macs // args.batch, "params": count(program).params,
             "one_shot": one_shot, "test": scores(program, data), "epochs": epochs,
             "steps": stats.get("steps"), "prune_seconds": prune_seconds,
             "train_seconds": stats.get("train_seconds"), "seconds": time.perf_counter() - started,
             **details}
    program.save(dense_folder(args) / f"{run_stem(variant, fraction, epochs, args)}.pt2")
    return entry


def run_stem(variant: str, fraction: float | None, epochs: int, args) -> str:
    target = f"{args.speedup:g}x" if variant == BUDGET_VARIANT else fraction
    return f"{variant}_{target}_{epochs}ep_lr{args.lr:g}"


def run_file(variant: str, fraction: float, epochs: int, args) -> Path:
    """`<stem>.json`; a quantized run's ("prunefx-obs + int8") is its pruned run's `<stem>_int8.json`."""
    pruned = variant.removesuffix(INT8)
    suffix = "_int8" if pruned != variant else ""
    return dense_folder(args) / f"{run_stem(pruned, fraction, epochs, args)}{suffix}.json"


# --- latency ---------------------------------------------------------------------------------------------

def dense_runner(dense: Program, args):
    example = (dense.example_inputs[0][:1],)
    path = export_onnx(rebatch(dense, 1), dense_folder(args) / "onnx" / "dense.onnx").path
    return onnx_runner(path, example, threads=args.threads)


def latency(entries: list[dict], dense: Program, args) -> None:
    """Batch-1 ONNX Runtime latency of each pruned model against the dense one: dense_tasks.timed_together's
    `--repeats` rounds, each timing every pruned model in turn, the pooled speed-up with its interval and range."""
    folder, example = dense_folder(args) / "onnx", (dense.example_inputs[0][:1],)
    dense_run = dense_runner(dense, args)
    runners = {}
    for index, entry in enumerate(entries):
        stem = run_stem(entry["variant"], entry["fraction"], entry["epochs"], args)
        pruned = rebatch(Program.load(dense_folder(args) / f"{stem}.pt2").eval(), 1)
        runners[index] = onnx_runner(export_onnx(pruned, folder / f"{stem}.onnx").path, example,
                                     threads=args.threads)
    for index, result in timed_together(dense_run, runners, args).items():
        entry = entries[index]
        entry["latency"] = result
        write_whole(run_file(entry["variant"], entry["fraction"], entry["epochs"], args), json.dumps(entry, indent=1))


# --- INT8 ----------------------------------------------------------------------------------------------

class OnnxDetector(torch.nn.Module):
    """An ONNX Runtime session run image by image (its file is batch 1), for evaluate_dense."""

    def __init__(self, session: OnnxRuntimeSession):
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.from_numpy(self.session.run(image[None])[0]) for image in images])


def int8(entry: dict, dense: Program, data, args) -> dict:
    """The pruned run of `entry` quantized at quantize_int8's defaults (calibrated on the first
    CALIBRATION_BATCHES training batches) and lowered for ONNX Runtime on this CPU, as `prunefx quantize`
    does; its mAP is that file's, and it is timed against the dense FP32 model. A failure is the result."""
    started = time.perf_counter()
    stem = run_stem(entry["variant"], entry["fraction"], entry["epochs"], args)
    result = {key: entry.get(key) for key in ("fraction", "macs_kept", "macs_target_met", "speedup_budget", "epochs",
                                          "macs_per_image", "params")}
    result.update({"variant": entry["variant"] + INT8, "fp32_test": entry["test"], "one_shot": None,
                   "command": command_line()})
    try:
        folder = dense_folder(args)
        exported, facts = quantized_for_onnxruntime(folder / f"{stem}.pt2", folder / "onnx" / f"{stem}_int8.onnx",
                                                    data.train, CALIBRATION_BATCHES)
        session = OnnxRuntimeSession(exported.path, threads=args.threads)
        result.update({"test": scores(OnnxDetector(session), data), **facts})
        example = (dense.example_inputs[0][:1],)
        result["latency"] = timed(dense_runner(dense, args), onnx_runner(exported.path, example,
                                                                          threads=args.threads), args)
    except Exception as error:  # the failure is the result (e.g. a layer the lowering cannot take)
        result.update({"error": first_line(error), "test": {"map": float("nan"), "map_50": float("nan")}})
    result["seconds"] = time.perf_counter() - started
    return result


# --- report ----------------------------------------------------------------------------------------------

def where(entry: dict) -> str:
    """A run's name in the report: variant, target (MACs fraction or measured budget), recovery epochs."""
    target = (f"a {entry['speedup_budget']:g}x budget" if entry.get("speedup_budget")
              else f"{entry['fraction']} of the MACs")
    return f"{entry['variant']} at {target}, {entry['epochs']} recovery epochs"


def verdict(entry: dict, dense_map: float) -> str:
    speed = entry.get("latency", {}).get("speedup")
    if speed is None:
        return "not timed"
    drop = dense_map - entry["test"]["map"]
    if speed >= TARGET_SPEEDUP and drop <= TARGET_DROP:
        return "met"
    return f"missed ({speed:.2f}x, {100 * drop:+.2f} pt drop)"


def table(runs: list[dict], dense_map: float) -> str:
    rows = []
    for e in sorted(runs, key=lambda e: (-(e["fraction"] or 0), e["epochs"], e["variant"])):
        timing = e.get("latency", {})
        speed = (f"{timing['speedup']:.2f}x{interval_cell(timing)} "
                 f"({timing['speedups'][0]:.2f}-{timing['speedups'][-1]:.2f})"
                 if timing else "-")
        ms = f"{timing['dense_ms']:.2f} / {timing['pruned_ms']:.2f}" if timing else "-"
        target = f"{e['speedup_budget']:g}x measured" if e.get("speedup_budget") else e["fraction"]
        kept = f"{e['macs_kept']:.3f}" + ("" if e["macs_target_met"] else " (target missed)")
        one_shot = f"{100 * e['one_shot']['map']:.2f}" if e.get("one_shot") else "-"
        rows.append([target, e["epochs"], e["variant"], kept, one_shot,
                     f"**{100 * e['test']['map']:.2f}**", f"{100 * e['test']['map_50']:.2f}",
                     f"{100 * (e['test']['map'] - dense_map):+.2f}", ms, speed, verdict(e, dense_map)])
    return markdown_table(["MACs target", "recovery epochs", "variant", "MACs kept", "one-shot mAP", "mAP after recovery",
                           "mAP@.5", "vs dense (points)", "ORT ms dense / pruned", "speed-up", "target"], rows)


def target_lines(runs: list[dict], dense_map: float) -> list[str]:
    timed = [e for e in runs if "latency" in e]
    met = [e for e in timed if verdict(e, dense_map) == "met"]
    lines = []
    if met:
        best = max(met, key=lambda e: e["latency"]["speedup"])
        lines.append(f"- >= {TARGET_SPEEDUP}x for <= {100 * TARGET_DROP:.0f} points of mAP@[.5:.95]: **met** by "
                     f"{where(best)} ({best['latency']['speedup']:.2f}x, "
                     f"{100 * (best['test']['map'] - dense_map):+.2f} points).")
    else:
        lines.append(f"- >= {TARGET_SPEEDUP}x for <= {100 * TARGET_DROP:.0f} points of mAP@[.5:.95]: **missed**; "
                     "every timed run: " + "; ".join(f"{where(e)}: {verdict(e, dense_map)}"
                                              for e in timed))
    sized = [e for e in runs if e["fraction"] is not None]
    for fraction, epochs in sorted({(e["fraction"], e["epochs"]) for e in sized}, key=lambda k: (-k[0], k[1])):
        same = [e for e in sized if (e["fraction"], e["epochs"]) == (fraction, epochs)]
        ours = [e for e in same if e["variant"].startswith("prunefx") and not e["variant"].endswith(INT8)]
        theirs = [e for e in same if e["variant"] == "tp-l2"]
        if ours and theirs:
            best, peer = max(ours, key=lambda e: e["test"]["map"]), theirs[0]
            gap = 100 * (best["test"]["map"] - peer["test"]["map"])
            lines.append(f"- prunefx >= Torch-Pruning at {fraction} of the MACs, {epochs} recovery epochs: "
                         f"**{'met' if gap >= 0 else 'missed'}**: "
                         f"{best['variant']} {100 * best['test']['map']:.2f} against tp-l2 "
                         f"{100 * peer['test']['map']:.2f} ({gap:+.2f} points; MACs kept "
                         f"{best['macs_kept']:.3f} and {peer['macs_kept']:.3f}).")
    return lines


def markdown(report: dict) -> str:
    info, dense = report["machine"], report["dense"]
    dense_map = dense["test"]["map"]
    lines = ["# Detection on Fashion-MNIST scenes: YOLOv8n mAP and ONNX Runtime speed-up, prunefx and Torch-Pruning",
             "", f"Produced by `{report['command']}`.", "", machine_summary(info), "",
             f"- Data: `fashion-mnist-det:{report['size']}`, {report['train']} train canvases (training items), "
             f"{report['val']} validation canvases (held-out training items), {report['test']} test canvases "
             "(test items; the reported mAP), 10 classes."
             + (f" prunefx read them from {report['data_path']}." if "data_path" in report else ""),
             f"- Dense: YOLOv8n trained from scratch by Ultralytics' own trainer, {dense['epochs']} epochs, batch "
             f"{dense['batch']} ({dense['train_seconds'] / 60:.0f} min), {dense['macs_per_image'] / 1e6:.1f} M MACs "
             "per image. Test mAP@[.5:.95] by prunefx (torchmetrics, pycocotools) "
             f"**{100 * dense_map:.2f}** (mAP@.5 {100 * dense['test']['map_50']:.2f}); by Ultralytics' own "
             f"validator on the same canvases {100 * dense['ultralytics_test']['map']:.2f} "
             f"(mAP@.5 {100 * dense['ultralytics_test']['map_50']:.2f}), the independent check: it counts "
             "every class above the threshold per box and keeps 300 boxes per image; prunefx under that "
             f"protocol gives {100 * dense['test_ultralytics_protocol']['map']:.2f} (mAP@.5 "
             f"{100 * dense['test_ultralytics_protocol']['map_50']:.2f}). Every other figure here is one "
             "class per box, 100 boxes per image (COCO's limit).",
             f"- Recovery, every variant: {' or '.join(map(str, report['epochs']))} epoch(s) (column 'recovery "
             "epochs') of distillation from the dense model "
             f"(Bernoulli KL of the class scores + teacher-weighted, scale-free box L1 on the decoded output), AdamW lr {report['lr']:g}; "
             f"widths multiples of {ROUND_TO} for every tool; the 16 DFL bins kept.",
             f"- Latency: ONNX Runtime, batch 1, {report['threads']} thread(s), each model alternated with the "
             f"dense one, {report['timing_runs']} runs each, in {report['repeats']} rounds, each comparing every "
             "model in turn; the speed-up is pooled over the rounds, with its 90 % interval (Student's t over the "
             "rounds, as `prunefx bench --vs` states one; range of the rounds in brackets).",
             "", table(report["runs"], dense_map), "", "Targets (issue 19):", "",
             *target_lines(report["runs"], dense_map), ""]
    for e in report["runs"]:
        lines.append(f"- {where(e)}: {done_in(e)}"
                     + (f"; load average {e['latency']['load_average_1min'][0]:.1f}" if "latency" in e else ""))
    return "\n".join(lines) + "\n"


def done_in(entry: dict) -> str:
    """How a run was made and how long it took, for the report's list of runs."""
    if entry["variant"].endswith(INT8):
        if "error" in entry:
            return f"INT8 failed: {entry['error']}"
        return (f"{entry['quantized_layers']} layers quantized, {entry['float_layers']} kept in float; in the "
                f"ONNX Runtime file ({entry['lowering']}) {entry['integer_units']} integer units, "
                f"{entry['float_convolution_inputs']} float convolutions reading their input unquantized; "
                f"{entry['seconds'] / 60:.1f} min to quantize, lower, score and time; "
                f"FP32 mAP before quantization {100 * entry['fp32_test']['map']:.2f}")
    trained = f"{(entry['train_seconds'] or 0) / 60:.1f} min ({entry['steps']} steps)"
    if entry["prune_seconds"] is None:  # CPD: the cuts happen during the recovery
        return f"pruned while training ({CPD_EVENTS} cuts) in {trained}"
    return (f"pruned in {entry['prune_seconds']:.0f} s, recovered in {trained}"
            + (f", Torch-Pruning ratio {entry['pruning_ratio']:.3f}" if "pruning_ratio" in entry else ""))


# --- command line ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="canvas side in pixels (default 128)")
    parser.add_argument("--train", type=int, default=4000, help="training canvases (default 4000)")
    parser.add_argument("--val", type=int, default=300, help="validation canvases (default 300)")
    parser.add_argument("--test", type=int, default=1000, help="test canvases, the reported mAP (default 1000)")
    parser.add_argument("--yolo-epochs", type=int, default=25, help="Ultralytics training epochs (default 25)")
    parser.add_argument("--yolo-batch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="prunefx recovery and evaluation batch")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=(*VARIANTS, LOCAL_VARIANT, BUDGET_VARIANT))
    parser.add_argument("--speedup", type=float, default=1.9,
                        help=f"{BUDGET_VARIANT}'s budget: measured ONNX Runtime speed-up at batch 1 (default 1.9)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2],
                        help="recovery epochs for every variant; several values: one run per value (default 2)")
    parser.add_argument("--budget-epochs", type=int, nargs="+",
                        help=f"recovery epochs of {BUDGET_VARIANT} instead of --epochs (one run per value)")
    parser.add_argument("--lr", type=float, default=5e-4, help="recovery AdamW learning rate")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tp-seconds", type=int, default=600, help="time limit of one Torch-Pruning pass")
    parser.add_argument("--dense-only", action="store_true", help="train and score the dense model, then stop")
    parser.add_argument("--latency", action="store_true", help="time the finished runs in ONNX Runtime")
    parser.add_argument("--report-only", action="store_true", help="write the results from the cached runs")
    parser.add_argument("--int8", action="store_true",
                        help="also quantize every prunefx-obs* run (INT8 PTQ, ONNX Runtime lowering), score and time it")
    return parser.parse_args(argv)


def int8_runs(runs: list[dict], dense: Program, data, args) -> list[dict]:
    """The "+ int8" run of every prunefx-obs* run, cached beside it (made unless --report-only)."""
    quantized = []
    for entry in [e for e in runs if e["variant"].startswith("prunefx-obs")]:
        path = run_file(entry["variant"] + INT8, entry["fraction"], entry["epochs"], args)
        if path.is_file():
            quantized.append(json.loads(path.read_text()))
        elif not args.report_only:
            print(f"[yolov8n] INT8 of {where(entry)}", file=sys.stderr)
            quantized.append(int8(entry, dense, data, args))
            write_whole(path, json.dumps(quantized[-1], indent=1))
    return quantized


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    yaml = yolo_dataset(args)
    data = scenes(yaml, args)
    dense, info = dense_program(data, yaml, args)
    print(f"[yolov8n] dense test mAP {100 * info['test']['map']:.2f} (prunefx), "
          f"{100 * info['test_ultralytics_protocol']['map']:.2f} (prunefx, Ultralytics' protocol), "
          f"{100 * info['ultralytics_test']['map']:.2f} (Ultralytics' validator)", file=sys.stderr)
    if args.dense_only:
        return 0
    runs = []
    plan = [(epochs, fraction, variant) for epochs, fraction, variant
            in itertools.product(args.epochs, args.fractions, args.variants) if variant != BUDGET_VARIANT]
    plan += [(epochs, None, BUDGET_VARIANT) for epochs in args.budget_epochs or args.epochs
             if BUDGET_VARIANT in args.variants]
    for epochs, fraction, variant in plan:
        path = run_file(variant, fraction, epochs, args)
        if path.is_file():
            runs.append(json.loads(path.read_text()))
        elif not args.report_only:
            print(f"[yolov8n] {variant} at {fraction} of the MACs, {epochs} recovery epochs", file=sys.stderr)
            entry = prune_and_recover(variant, fraction, epochs, dense, data, args)
            entry["command"] = command_line()  # the process that trained it (runs may be split across commands)
            write_whole(path, json.dumps(entry, indent=1))
            runs.append(entry)
            one_shot = f"{100 * entry['one_shot']['map']:.2f}" if entry["one_shot"] else "-"
            print(f"[yolov8n] {variant} at {fraction}: mAP {one_shot} one-shot, "
                  f"{100 * entry['test']['map']:.2f} after recovery", file=sys.stderr)
    if args.latency:
        latency([e for e in runs if "latency" not in e], dense, args)
    if args.int8:
        runs += int8_runs(runs, dense, data, args)
    report = {"command": command_line(), "machine": machine_info(threads=args.threads), "size": args.size,
              "train": args.train, "val": args.val, "test": args.test,
              "epochs": sorted({epochs for epochs, _, _ in plan}), "lr": args.lr,
              "threads": args.threads, "timing_runs": args.runs, "repeats": args.repeats, "dense": info, "runs": runs,
              "data_path": f"train {data.train!r}; test {data.test!r}"}  # the files and loader the figures came from
    write_results(NAME, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
