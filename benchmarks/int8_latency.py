"""INT8 on ONNX Runtime: prunefx's quantize_int8 (and with pruning, and QAT) vs ONNX Runtime's quantize_static
and NVIDIA ModelOpt's ONNX PTQ, measured side by side.

Part 1, 1x3x224x224, batch 1 (--models): MobileNetV2 with its ImageNet weights (the offline package);
ResNet-50 and EfficientNet-B0 with random weights and realistic batch norms, ViT-S/16 (timm) with random
weights (latency does not depend on the weight values).
Calibration: the first 10 of the 20 offline ImageNet images and their mirror images. Variants:
- fp32: runtime/onnx/export.export_onnx; int8: passes/quantize_int8 (--method, mse by default) lowered for ONNX
  Runtime on this CPU (runtime/onnx/quantized.onnxruntime_lowering: u8s7 without VNNI, u8 with);
- pruned fp32 / pruned int8: remove_channels to half the MACs (l2, global, widths a multiple of 16), then the
  same INT8 lowering ("gains multiply": pruned int8 vs fp32 against 0.9 x the product of the two gains);
- ort u8 / ort s8: onnxruntime.quantization.quantize_static (QDQ, per-channel weights, MinMax) on the FP32
  file, its default U8 asymmetric activations and symmetric S8; modelopt: NVIDIA ModelOpt's ONNX PTQ
  (modelopt.onnx.quantization.quantize, int8, max calibration, CPU, FP32 kept as high precision).
Part 2 (--fashion-mnist): the small models of prunefx/models/small/ trained --train-epochs here (cached in
build/int8_latency/), test accuracy on --test-images Fashion-MNIST test images and batch-1 latency of:
fp32, int8 PTQ, pruned fp32 (remove_channels to half the MACs, widths a multiple of 8, then
--recovery-steps of KD from the dense model), pruned int8 PTQ, pruned int8 QAT (--qat-steps of KD
through the fake quantizers, passes/distill.py), and the peers on the dense FP32 file. Calibration: the
first 8 training batches of 128 of epoch 0, the same images for every method (read before any KD).
Latency: every variant timed in one process, interleaved in blocks by the runtime's loop (the order reversed on
every other pass, untimed calls before each block), median / p90 of single runs, ONNX
Runtime CPU at --threads intra-op threads; the load average is recorded at the start and at the end. A speed-up
over FP32 is the runtime's statistic (`prunefx bench --vs`'s): the ratio of medians, with its 90 % interval over
the pairs of blocks timed in the same pass.

Writes benchmarks/results/int8_latency.json and .md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_latency.py [--runs 40] [--threads 2] \
        [--fashion-mnist resnet20 mobilenetv2_small vit_tiny_fmnist]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from common import (
    BUILD,
    RESULTS,
    command_line,
    interval_cell,
    machine_info,
    machine_summary,
    markdown_table,
    modelopt_environment,
    modelopt_version,
    publish_results,
    realistic_batchnorm,
    relative_difference,
    speedup_fields,
)

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import Program, capture
from prunefx.graph.rebatch import rebatch
from prunefx.models import build_model
from prunefx.passes.distill import distill
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.passes.remove_channels import remove_channels
from prunefx.runtime import LatencyComparison, OnnxRuntimeSession, export_onnx
from prunefx.runtime.measure.latency import pooled_rounds
from prunefx.runtime.measure.timing_loop import alternate_all
from prunefx.runtime.onnx.quantize_static import quantize_static_file
from prunefx.runtime.onnx.quantized import export_quantized_onnx, onnxruntime_lowering
from prunefx.runtime.ort.runners import onnx_runner

NAME = "int8_latency"
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "vit_s16")
VARIANTS = ("fp32", "int8", "pruned fp32", "pruned int8", "ort u8", "ort s8", "modelopt")
SMALL_VARIANTS = ("fp32", "int8", "pruned fp32", "pruned int8", "pruned int8 qat", "ort u8", "ort s8", "modelopt")
HELD_OUT = slice(10, 20)
SETTLE = 2  # untimed calls before each block, as compare_latency and `prunefx bench` settle theirs
FASHION_MNIST_MODELS = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
FASHION_MNIST_BATCH = 128
CACHE = BUILD / NAME


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant (default 40)")
    parser.add_argument("--block", type=int, default=5, help="runs per variant before the next one (default 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch threads for training, KD and calibration (default 2; latency is ONNX Runtime's)")
    parser.add_argument("--method", default="mse", choices=("max", "percentile", "mse", "entropy"),
                        help="prunefx activation calibration (default mse, quantize_int8's)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS, metavar="NAME")
    parser.add_argument("--fashion-mnist", nargs="*", default=[], choices=FASHION_MNIST_MODELS, metavar="NAME",
                        help="also measure test accuracy on Fashion-MNIST for these small models")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs the Fashion-MNIST models train (1)")
    parser.add_argument("--recovery-steps", type=int, default=100, help="KD steps after pruning (100)")
    parser.add_argument("--qat-steps", type=int, default=60, help="KD steps of quantization-aware training (60)")
    parser.add_argument("--test-images", type=int, default=10000, help="Fashion-MNIST test images (10000)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    return parser.parse_args(argv)


def build(name: str) -> torch.nn.Module:
    if name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    if name == "vit_s16":  # ViT-S/16 (timm's vit_small_patch16_224), random weights: no batch norm to set
        return timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    model = getattr(torchvision.models, name)(weights=None)
    return realistic_batchnorm(model, (1, 3, 224, 224)).eval()


def calibration(images: torch.Tensor) -> list[tuple[torch.Tensor]]:
    first = images[:10]
    return [(x.unsqueeze(0),) for x in torch.cat([first, first.flip(-1)])]


PRUNED_ROUND_TO = 16  # part 1's pruned widths: the multiple ONNX Runtime's INT8 kernels run well (int8_after_pruning)


def pruned(program: Program, round_to: int) -> Program:
    program = program.clone().eval()
    remove_channels(program, config={"macs": 0.5, "importance": "l2", "ranking": "global", "round_to": round_to,
                                     "max_ratio": 0.8})
    return program


def int8_file(program: Program, path: Path, batches, method: str) -> Path:
    quantized = program.clone().eval()
    quantize_int8(quantized, config={"calibration": batches, "method": method})
    return export_quantized_onnx(quantized, path, activations=onnxruntime_lowering()).path


def int8_pair_files(name: str, images: torch.Tensor, folder: Path, *,
                    pruned_round_to: int | None = None) -> dict[str, Path]:
    """The 224x224 model `name` as FP32, prunefx INT8 (mse) and quantize_static U8 files under `folder`, both
    INT8 files calibrated on `calibration(images)`: the pair that int8_profile and int8_head_to_head compare.
    `pruned_round_to`: also the model pruned as run_model prunes it (half the MACs, widths on that multiple), as
    FP32 and prunefx INT8 ("pruned fp32", "pruned int8")."""
    batches = calibration(images)
    dense = capture(build(name), torch.randn(1, 3, 224, 224), name=name).eval()
    fp32 = export_onnx(dense, folder / "fp32.onnx").path
    files = {"fp32": fp32, "prunefx int8": int8_file(dense, folder / "int8.onnx", batches, "mse"),
             "ort u8": quantize_static_file(fp32, folder / "ort_u8.onnx", batches, activations="u8")}
    if pruned_round_to is not None:
        small = pruned(dense, pruned_round_to)
        files["pruned fp32"] = export_onnx(small, folder / "pruned_fp32.onnx").path
        files["pruned int8"] = int8_file(small, folder / "pruned_int8.onnx", batches, "mse")
    return files


def peer_files(fp32: Path, folder: Path, batches) -> dict[str, Path | str]:
    """quantize_static U8 / S8 and ModelOpt on the FP32 file; a peer that fails is its one-line error."""
    files: dict[str, Path | str] = {}
    for kind in ("u8", "s8"):
        files[f"ort {kind}"] = quantize_static_file(fp32, folder / f"{fp32.stem}_ort_{kind}.onnx", batches,
                                                    activations=kind)
    files["modelopt"] = modelopt_file(fp32, folder / f"{fp32.stem}_modelopt.onnx", batches)
    return files


MODELOPT_SCRIPT = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
quantize(sys.argv[1], quantize_mode="int8", calibration_data={"input_0": np.load(sys.argv[3])},
         calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=sys.argv[2],
         log_level="ERROR")
"""


def modelopt_file(fp32: Path, target: Path, batches) -> Path | str:
    """ModelOpt's ONNX PTQ in a child process: importing modelopt.onnx patches onnxruntime.quantization, after
    which quantize_static in the same process finds no ranges for the graph inputs."""
    data = target.with_suffix(".npy")
    np.save(data, np.concatenate([batch[0].numpy() for batch in batches]))
    done = subprocess.run([sys.executable, "-c", MODELOPT_SCRIPT, str(fp32), str(target), str(data)],
                          capture_output=True, text=True, env=modelopt_environment())
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return f"ModelOpt failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}"
    return target


def accuracy(sessions: dict, images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict]:
    outputs = {variant: np.concatenate([session.run(x.unsqueeze(0))[0] for x in images])
               for variant, session in sessions.items()}
    reference = outputs["fp32"].argmax(1)
    return {variant: {"top1_all_20": float((out.argmax(1) == labels.numpy()).mean()),
                      "agreement_held_out_10": float((out.argmax(1) == reference)[HELD_OUT].mean()),
                      "relative_output_difference": relative_difference(outputs["fp32"], out)}
            for variant, out in outputs.items()}


def interleaved_blocks(sessions: dict, x: torch.Tensor, args) -> dict[str, list[list[float]]]:
    """Blocks of `block` runs of each variant in turn until each has `runs` (seconds), by the runtime's own loop
    (timing_loop.alternate_all: block i of every variant in pass i, the order reversed on odd passes, untimed calls
    before each block), so machine noise and drift hit all alike. Each variant is timed in a session of its own, set
    as `prunefx bench` sets its timing sessions (onnx_runner: subnormal floats flushed to zero, worker threads
    spinning) and called as its timing loop calls one."""
    runners = {variant: onnx_runner(session.path, [x], threads=session.threads) for variant, session in sessions.items()}
    with contextlib.ExitStack() as stack:
        calls = {variant: stack.enter_context(runner.timed_calls()) for variant, runner in runners.items()}
        timed = alternate_all(tuple(calls.values()), args.warmup, args.runs, args.block, SETTLE, time.perf_counter)
    return dict(zip(calls, timed))


def against(blocks: dict[str, list[list[float]]], reference: str, threads: int) -> dict[str, LatencyComparison]:
    """Each variant against `reference` as the runtime compares two models (pooled_rounds of one round: the ratio
    of medians, its interval over the pairs of blocks of one pass); its `b` is the variant's own latency."""
    return {variant: pooled_rounds([(blocks[reference], timed, threads, threads)])
            for variant, timed in blocks.items()}


def _sessions(files: dict, threads: int) -> tuple[dict, dict]:
    sessions = {variant: OnnxRuntimeSession(path, threads=threads) for variant, path in files.items()
                if isinstance(path, Path)}
    failures = {variant: path for variant, path in files.items() if not isinstance(path, Path)}
    return sessions, failures


def _with_speedups(blocks: dict, failures: dict, threads: int) -> dict:
    rows = {variant: {**comparison.b.to_dict(), **speedup_fields(comparison, "speedup_vs_fp32")}
            for variant, comparison in against(blocks, "fp32", threads).items()}
    return {**rows, **{variant: {"error": message} for variant, message in failures.items()}}


def gains_multiply(rows: dict) -> dict:
    product = rows["pruned fp32"]["speedup_vs_fp32"] * rows["int8"]["speedup_vs_fp32"]
    measured = rows["pruned int8"]["speedup_vs_fp32"]
    return {"pruned_fp32": rows["pruned fp32"]["speedup_vs_fp32"], "int8": rows["int8"]["speedup_vs_fp32"],
            "product": product, "pruned_int8": measured, "ratio": measured / product, "met": measured >= 0.9 * product}


def run_model(name: str, images, labels, args) -> dict:
    batches = calibration(images)
    dense = capture(build(name), torch.randn(1, 3, 224, 224), name=name).eval()
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-") as tmp:
        folder = Path(tmp)
        small = pruned(dense, PRUNED_ROUND_TO)
        files = {"fp32": export_onnx(dense, folder / f"{name}.onnx").path,
                 "int8": int8_file(dense, folder / f"{name}_int8.onnx", batches, args.method),
                 "pruned fp32": export_onnx(small, folder / f"{name}_pruned.onnx").path,
                 "pruned int8": int8_file(small, folder / f"{name}_pruned_int8.onnx", batches, args.method)}
        files.update(peer_files(files["fp32"], folder, batches))
        sessions, failures = _sessions(files, args.threads)
        quality = accuracy(sessions, images, labels)
        blocks = interleaved_blocks(sessions, images[:1], args)
    rows = _with_speedups(blocks, failures, args.threads)
    rows = {variant: {**row, **quality.get(variant, {})} for variant, row in rows.items()}
    return {"variants": rows, "gains_multiply": gains_multiply(rows)}


# ---- Fashion-MNIST ---------------------------------------------------------------------------------

def trained_fashion_mnist(name: str, data, epochs: int) -> Program:
    """The model trained `epochs` epochs on Fashion-MNIST (cached: training takes minutes on these CPUs)."""
    path = CACHE / f"{name}_{epochs}epochs.pt2"
    if path.is_file():
        return Program.load(path).eval()
    torch.manual_seed(0)
    program = capture(build_model(f"prunefx:{name}").module, next(iter(data.train))[0], name=name)
    started = time.perf_counter()
    program = distill(program, config={"data": data.train, "epochs": epochs, "kd_weight": 0.0, "seed": 0,
                                       "warmup_steps": len(data.train) // 2, "optimizer": "sgd", "lr": 0.1,
                                       "weight_decay": 5e-4, "momentum": 0.9}).program.eval()
    print(f"{name}: trained {epochs} epochs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    program.save(path)
    return program


def _kd(program: Program, teacher: Program, data, steps: int, lr: float) -> Program:
    return distill(program, config={"data": data.train, "steps": steps, "teacher": teacher, "kd_weight": 0.9,
                                    "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "progress": False}).program.eval()


def calibration_batches(data) -> list[tuple[torch.Tensor]]:
    """The first 8 training batches of epoch 0: read once, before any KD, for every method. Distillation leaves
    the loader on its last epoch (past one epoch with 469 steps), so batches drawn after it are other images."""
    if hasattr(data.train, "set_epoch"):
        data.train.set_epoch(0)
    return [(inputs,) for inputs, _ in zip((batch[0] for batch in data.train), range(8))]


def small_programs(name: str, data, batches, args) -> dict[str, Program]:
    """The Fashion-MNIST variants as Programs at the training batch size (fp32 ones, fake-quantized ones);
    `batches` calibrates the INT8 ones."""
    dense = trained_fashion_mnist(name, data, args.train_epochs)
    small = _kd(pruned(dense, 8), dense, data, args.recovery_steps, 0.01)
    programs = {"fp32": dense, "pruned fp32": small}
    for variant, source in (("int8", dense), ("pruned int8", small)):
        programs[variant] = source.clone().eval()
        quantize_int8(programs[variant], config={"calibration": batches, "method": args.method})
    started = time.perf_counter()
    programs["pruned int8 qat"] = _kd(programs["pruned int8"].clone(), dense, data, args.qat_steps, 0.001)
    print(f"{name}: QAT {args.qat_steps} steps in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return programs


def test_accuracy(session: OnnxRuntimeSession, images: torch.Tensor, labels: np.ndarray) -> float:
    predicted = np.array([int(session.run(x.unsqueeze(0))[0].argmax()) for x in images])
    return float((predicted == labels).mean())


def fashion_mnist_test_set(data, limit: int) -> tuple[torch.Tensor, np.ndarray]:
    """The first `limit` labelled test images and their labels (label -1 is the loader's padding)."""
    tests = list(data.test)
    images = torch.cat([inputs for inputs, _ in tests])
    labels = torch.cat([targets for _, targets in tests]).numpy()
    return images[labels >= 0][:limit], labels[labels >= 0][:limit]


def fashion_mnist_row(name: str, args) -> dict:
    data = fashion_mnist_data(FASHION_MNIST_BATCH, augment=True)
    batches = calibration_batches(data)
    programs = small_programs(name, data, batches, args)
    images, labels = fashion_mnist_test_set(data, args.test_images)
    calibration_images = [(x.unsqueeze(0),) for (inputs,) in batches for x in inputs]  # the peers': the same images
    lowering = onnxruntime_lowering()
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-") as tmp:
        folder, files = Path(tmp), {}
        for variant, program in programs.items():
            one = rebatch(program, 1)
            path = folder / f"{name}_{variant.replace(' ', '_')}.onnx"
            files[variant] = (export_quantized_onnx(one, path, activations=lowering).path if "int8" in variant
                              else export_onnx(one, path).path)
        files.update(peer_files(files["fp32"], folder, calibration_images))
        sessions, failures = _sessions(files, args.threads)
        scores = {variant: test_accuracy(session, images, labels) for variant, session in sessions.items()}
        blocks = interleaved_blocks(sessions, images[:1], args)
    rows = _with_speedups(blocks, failures, args.threads)
    return {"test_images": len(labels), "variants": {variant: {**row, "accuracy": scores.get(variant)}
                                                     for variant, row in rows.items()}}


# ---- report ----------------------------------------------------------------------------------------

def _cells(row: dict) -> list[str]:
    if "error" in row:
        return ["-", "-", "-", row["error"]]
    return [f"{row['median_ms']:.2f}", f"{row['p90_ms']:.2f}",
            f"{row['speedup_vs_fp32']:.2f}x{interval_cell(row, 'speedup_vs_fp32')}"]


def markdown(report: dict, info: dict) -> str:
    text = (f"# INT8 on ONNX Runtime: prunefx vs quantize_static and ModelOpt\n\n{machine_summary(info)}; "
            f"load average at start {info['load_average_at_start']}, at end {report['load_average_at_end']}. "
            f"prunefx ONNX Runtime lowering on this CPU: {report['lowering']}.\n\nCommand: `{report['command']}`\n")
    rows, gains = [], []
    for model, result in report["models"].items():
        for variant, row in result["variants"].items():
            quality = (f"{row['top1_all_20']:.2f} / {row['agreement_held_out_10']:.2f}"
                       if model == "mobilenet_v2" and "top1_all_20" in row else "random weights")
            cells = _cells(row)
            rows.append([model, variant, *cells[:3], quality if "error" not in row else cells[3]])
        g = result["gains_multiply"]
        gains.append([model, f"{g['pruned_fp32']:.2f}x", f"{g['int8']:.2f}x", f"{g['product']:.2f}x",
                      f"{g['pruned_int8']:.2f}x", f"{g['ratio']:.2f}", "yes" if g["met"] else "no"])
    if rows:
        text += (f"\n## 224x224, batch 1, {info['threads']} threads, {info['runs']} interleaved runs per variant\n\n"
                 + markdown_table(["model", "variant", "median ms", "p90 ms", "vs FP32",
                                   "top-1 (20) / agreement with FP32 (10)"], rows)
                 + "\n\n### Gains multiply (pruned 0.5 + INT8 vs dense FP32 >= 0.9 x product)\n\n"
                 + markdown_table(["model", "pruned fp32", "int8", "product", "pruned int8", "ratio", "met"], gains)
                 + "\n")
    for model, result in report["fashion_mnist"].items():
        rows = []
        for variant, row in result["variants"].items():
            cells = _cells(row)
            score = f"{100 * row['accuracy']:.2f}" if row.get("accuracy") is not None else cells[3]
            rows.append([variant, score, *cells[:3]])
        text += (f"\n## Fashion-MNIST {model} ({result['test_images']} test images, batch 1 latency; trained "
                 f"{info['train_epochs']} epoch(s), pruned recovery {info['recovery_steps']} KD steps, QAT "
                 f"{info['qat_steps']} KD steps)\n\n"
                 + markdown_table(["variant", "test top-1 %", "median ms", "p90 ms", "vs FP32"], rows) + "\n")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    version = modelopt_version()  # its rows are the comparison: none is published as a failure to import it
    torch.set_num_threads(args.torch_threads)
    images, labels = load_imagenet_batch()
    info = machine_info(threads=args.threads, runs=args.runs, block=args.block, method=args.method, modelopt=version,
                        train_epochs=args.train_epochs, recovery_steps=args.recovery_steps, qat_steps=args.qat_steps,
                        test_images=args.test_images)
    report = {"command": command_line(), "machine": info, "lowering": onnxruntime_lowering(),
              "fashion_mnist": {name: fashion_mnist_row(name, args) for name in args.fashion_mnist},
              "models": {name: run_model(name, images, labels, args) for name in args.models}}
    report["load_average_at_end"] = list(os.getloadavg())
    return publish_results(NAME, report, markdown(report, info), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
