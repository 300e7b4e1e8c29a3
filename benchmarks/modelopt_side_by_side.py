"""prunefx's TensorRT INT8 file side by side with NVIDIA ModelOpt's ONNX INT8 PTQ, on 8 models.

For each model, one captured Program gives the FP32 ONNX file (runtime/onnx/export.export_onnx). From it and the same
calibration images (the first 10 offline ImageNet images and their mirror images, resized to --size):
- prunefx: `quantize_int8` (its defaults: mse calibration, INT8 attention) lowered as `prunefx quantize` writes
  model_trt.onnx (symmetric S8 Q/DQ, export_quantized_onnx(activations="s8"));
- ModelOpt: `modelopt.onnx.quantization.quantize(fp32.onnx, quantize_mode="int8")` on the FP32 file, on CPU
  (calibration_eps=["cpu"]), its default calibration for INT8, with FP32 kept as the high precision so that
  ONNX Runtime on this CPU runs it (ModelOpt's default would cast the rest to FP16).
Both files are read with `onnx` by the counter below (independent of prunefx's own GraphIndex):
- INT8 layers: Conv/Gemm/MatMul whose data and weight inputs both come from a DequantizeLinear, possibly through
  data-movement operators (Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Identity), which TensorRT
  propagates Q/DQ across;
- activation Adds: Adds whose two inputs both depend on the image (residual adds, and in YOLOv8n's decoder two
  adds of box coordinates); "with Q/DQ": at least one input comes from a DequantizeLinear (TensorRT fuses the
  add into the convolution before it when the other input, the skip, is dequantized);
- activation Q/DQ pairs: QuantizeLinear of an image-dependent tensor feeding a DequantizeLinear; weight
  quantizers: DequantizeLinear nodes whose input is a stored tensor.
Then `prunefx check --target trt11` on both files (errors, warnings and their rules), and ONNX Runtime (CPU)
parity of both files against FP32 on the 20 images: max |out - fp32| / max |fp32| and, for the classifiers,
top-1 agreement with FP32. Only MobileNetV2 has trained weights (the offline package); the others are random
(batch norms given realistic statistics), so parity on them says how close the arithmetic is, not accuracy.

ModelOpt is a benchmark dependency, installed beside the venv by `make bench` (the Makefile's MODELOPT, pinned):

    make .venv/modelopt/.prunefx-installed
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/modelopt_side_by_side.py [--models NAME ...] [--size 224]

Each model's finished row is cached in build/modelopt_side_by_side/, so that an interrupted run resumes where it
stopped (run_all.py empties that folder before a published run and checks, on `--resume`, that the same code
filled it). Writes benchmarks/results/modelopt_side_by_side.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from common import (
    BUILD,
    command_line,
    machine_info,
    machine_summary,
    markdown_table,
    modelopt_environment,
    modelopt_version,
    publish_results,
    realistic_batchnorm,
    relative_difference,
)

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.graph import capture
from prunefx.graph.whole_files import write_whole
from prunefx.models import build_model
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import OnnxRuntimeSession, export_onnx
from prunefx.runtime.check.readiness import check_model
from prunefx.runtime.onnx.quantized import export_quantized_onnx

NAME = "modelopt_side_by_side"
CACHE = BUILD / NAME
MODELS = {  # the 8 models: name -> prunefx model reference
    "resnet50": "torchvision:resnet50",
    "mobilenet_v2": "torchvision:mobilenet_v2",  # ImageNet weights from the offline package
    "efficientnet_b0": "torchvision:efficientnet_b0",
    "regnet_y_400mf": "torchvision:regnet_y_400mf",
    "convnext_tiny": "torchvision:convnext_tiny",
    "deit_small": "timm:deit_small_patch16_224",
    "swin_tiny": "timm:swin_tiny_patch4_window7_224",
    "yolov8n": "ultralytics:yolov8n.yaml",  # AGPL: imported only here, lazily, by prunefx.models
}
LAYERS = ("Conv", "Gemm", "MatMul")
MOVES = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


# ---- the independent counter ----------------------------------------------------------------------

class OnnxCounts:
    """What one Q/DQ file quantizes, read from the ONNX graph alone."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.producer = {output: node for node in self.nodes for output in node.output}
        self.stored = {tensor.name for tensor in model.graph.initializer}
        self.live = self._image_dependent(model)

    def _image_dependent(self, model: onnx.ModelProto) -> set[str]:
        live = {value.name for value in model.graph.input} - self.stored
        for node in self.nodes:  # ONNX files are topologically sorted
            if any(name in live for name in node.input):
                live.update(node.output)
        return live

    def from_dequantize(self, name: str) -> bool:
        node = self.producer.get(name)
        while node is not None and node.op_type in MOVES:
            node = self.producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    def as_dict(self) -> dict:
        layers = [node for node in self.nodes if node.op_type in LAYERS]
        int8 = [node for node in layers if all(self.from_dequantize(name) for name in node.input[:2])]
        adds = [node for node in self.nodes if node.op_type == "Add" and all(name in self.live for name in node.input)]
        consumers = Counter(name for node in self.nodes if node.op_type == "DequantizeLinear" for name in node.input[:1])
        quantizers = [node for node in self.nodes if node.op_type == "QuantizeLinear"]
        return {
            "layers": len(layers), "int8_layers": len(int8),
            "int8_by_op": dict(Counter(node.op_type for node in int8)),
            "float_layers": [node.name for node in layers if node not in int8],
            "activation_adds": len(adds),
            "adds_with_qdq": sum(any(self.from_dequantize(name) for name in node.input) for node in adds),
            "activation_qdq_pairs": sum(node.input[0] in self.live and consumers[node.output[0]] > 0
                                        for node in quantizers),
            "weight_quantizers": sum(node.op_type == "DequantizeLinear" and node.input[0] not in self.live
                                     for node in self.nodes),
        }


def counts_of(path: Path) -> dict:
    return OnnxCounts(onnx.load(str(path))).as_dict()


def readiness(path: Path) -> dict:
    report = check_model(onnx.load(str(path)), "trt11", name=path.name)
    rules = Counter(f"{finding.severity}:{finding.rule}" for finding in report.findings)
    return {"errors": report.count("error"), "warnings": report.count("warning"), "rules": dict(rules)}


# ---- the models and the two INT8 files ------------------------------------------------------------

def build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
        return model.eval()
    module = build_model(MODELS[name], image_size=size).module
    return realistic_batchnorm(module, (1, 3, size, size)).eval()


def calibration(images: torch.Tensor) -> list[tuple[torch.Tensor]]:
    first = images[:10]
    return [(x.unsqueeze(0),) for x in torch.cat([first, first.flip(-1)])]


MODELOPT_SCRIPT = """
import sys, numpy as np, onnx
from modelopt.onnx.quantization import quantize
name = onnx.load(sys.argv[1], load_external_data=False).graph.input[0].name
quantize(sys.argv[1], quantize_mode="int8", calibration_data={name: np.load(sys.argv[3])}, calibration_eps=["cpu"],
         high_precision_dtype="fp32", output_path=sys.argv[2], log_level="ERROR")
"""


def modelopt_file(fp32: Path, target: Path, batches) -> Path:
    """ModelOpt's PTQ in a child process (importing modelopt.onnx patches onnxruntime.quantization)."""
    data = target.with_suffix(".npy")
    np.save(data, np.concatenate([batch[0].numpy() for batch in batches]))
    done = subprocess.run([sys.executable, "-c", MODELOPT_SCRIPT, str(fp32), str(target), str(data)],
                          capture_output=True, text=True, env=modelopt_environment())
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"ModelOpt failed on {fp32.name}: {lines[-1] if lines else done.returncode}")
    return target


def prunefx_file(program, target: Path, batches) -> Path:
    quantized = program.clone().eval()
    quantize_int8(quantized, config={"calibration": batches})
    return export_quantized_onnx(quantized, target, activations="s8").path


def parity(files: dict[str, Path], images: torch.Tensor) -> dict[str, dict]:
    """Each INT8 file against FP32 in ONNX Runtime on every image, one image at a time."""
    outputs = {}
    for variant, path in files.items():
        session = OnnxRuntimeSession(path, threads=torch.get_num_threads())
        outputs[variant] = [session.run(x.unsqueeze(0)) for x in images]
    reference = outputs.pop("fp32")
    rows = {}
    for variant, got in outputs.items():
        row = {"relative_difference": relative_difference(reference, got)}
        if reference[0][0].ndim == 2:  # a classifier's logits: top-1 agreement with FP32
            row["top1_agreement"] = sum(int(np.argmax(a[0]) == np.argmax(b[0])) for a, b in zip(reference, got))
        rows[variant] = row
    return rows


def _progress(name: str, step: str, started: float) -> float:
    """Print a step's end on stderr (a run takes minutes per model on a loaded machine); its seconds."""
    seconds = time.perf_counter() - started
    print(f"{name}: {step} after {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


def run_model(name: str, images: torch.Tensor, size: int) -> dict:
    folder = CACHE / name
    folder.mkdir(parents=True, exist_ok=True)
    batches = calibration(images)
    started = time.perf_counter()
    program = capture(build(name, size), torch.randn(1, 3, size, size), name=name).eval()
    files = {"fp32": export_onnx(program, folder / "fp32.onnx").path}
    _progress(name, "captured and exported FP32", started)
    files["prunefx"] = prunefx_file(program, folder / "model_trt.onnx", batches)
    seconds = {"prunefx": _progress(name, "prunefx model_trt.onnx", started)}
    started = time.perf_counter()
    files["modelopt"] = modelopt_file(files["fp32"], folder / "modelopt_int8.onnx", batches)
    seconds["modelopt"] = _progress(name, "ModelOpt INT8 file", started)
    quality = parity(files, images)
    _progress(name, "ONNX Runtime parity", started)
    return {tool: {**counts_of(files[tool]), "check_trt11": readiness(files[tool]), **quality[tool],
                   "seconds": round(seconds[tool], 1)} for tool in ("prunefx", "modelopt")}


# ---- the run --------------------------------------------------------------------------------------

def cached_row(name: str, images: torch.Tensor, args) -> dict:
    path = CACHE / f"{name}_{args.size}.json"
    if path.is_file():  # finished by an earlier, interrupted run of this build folder
        return json.loads(path.read_text())
    started = time.perf_counter()
    row = run_model(name, images, args.size)
    CACHE.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(row, indent=2) + "\n")
    print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return row


def verdict(row: dict) -> str:
    ours, theirs = row["prunefx"], row["modelopt"]
    behind = [what for what in ("int8_layers", "adds_with_qdq") if ours[what] < theirs[what]]
    return "prunefx >= ModelOpt" if not behind else "behind on " + ", ".join(behind)


def _cells(entry: dict) -> tuple:
    check = entry["check_trt11"]
    agreement = f"{entry['top1_agreement']}/20" if "top1_agreement" in entry else "-"
    return (f"{entry['int8_layers']} of {entry['layers']}", f"{entry['adds_with_qdq']} of {entry['activation_adds']}",
            entry["activation_qdq_pairs"], entry["weight_quantizers"], f"{check['errors']} / {check['warnings']}",
            f"{entry['relative_difference']:.3f}", agreement)


def markdown(data: dict) -> str:
    """The results file as the .md beside it (scripts/docs_results.py renders the docs page with it too)."""
    info, rows = data["machine"], data["models"]
    headers = ("model", "file", "INT8 Conv/Gemm/MatMul", "activation Adds with Q/DQ", "activation Q/DQ pairs",
               "weight quantizers", "check trt11 errors / warnings", "max diff vs FP32 (rel.)",
               "top-1 = FP32", "verdict")
    table = [(name, tool, *_cells(row[tool]), row["verdict"] if tool == "prunefx" else "")
             for name, row in rows.items() for tool in ("prunefx", "modelopt")]
    rules = [(name, tool, ", ".join(f"{rule} x{count}" for rule, count in row[tool]["check_trt11"]["rules"].items())
              or "none") for name, row in rows.items() for tool in ("prunefx", "modelopt")]
    floats = [(name, tool, ", ".join(row[tool]["float_layers"]) or "none")
              for name, row in rows.items() for tool in ("prunefx", "modelopt")]
    return (f"# prunefx and ModelOpt INT8 ONNX side by side\n\n`{data['command']}`\n\n{machine_summary(info)}; "
            f"ModelOpt {info['modelopt']}; CPU only, {info['size']}x{info['size']} inputs, calibration on 20 images "
            f"(10 offline ImageNet images and their mirrors), parity on the 20 images in ONNX Runtime. Only "
            f"MobileNetV2 has trained weights. Load average {info['load_average_at_start']} at the start, "
            f"{info['load_average_at_end']} at the end.\n\n" + markdown_table(headers, table) +
            "\n\n## prunefx check --target trt11 findings by rule\n\n" +
            markdown_table(("model", "file", "findings"), rules) +
            "\n\n## Conv/Gemm/MatMul left in float\n\n" + markdown_table(("model", "file", "layers"), floats) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS, metavar="NAME")
    parser.add_argument("--size", type=int, default=224, help="input height and width (224)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (2)")
    args = parser.parse_args()
    version = modelopt_version()
    torch.set_num_threads(args.threads)
    images, _ = load_imagenet_batch(args.size)
    rows = {name: cached_row(name, images, args) for name in args.models}
    info = machine_info(threads=args.threads, size=args.size, modelopt=version,
                        load_average_at_end=list(os.getloadavg()))
    data = {"command": command_line(), "machine": info,
            "models": {name: {**row, "verdict": verdict(row)} for name, row in rows.items()}}
    return publish_results(NAME, data, markdown(data))


if __name__ == "__main__":
    sys.exit(main())
