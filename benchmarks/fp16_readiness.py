"""The FP16 lowering against FP32 on the 20 ImageNet sample images, and what `prunefx check --target trt11` says
about the FP16 file: torchvision's ImageNet MobileNetV2 (offline weights) exported to ONNX, lowered to an FP16
graph with float32 inputs and outputs (runtime/onnx/float16.py), both files run in ONNX Runtime on the same
images. Reports the largest logit difference relative to the largest FP32 logit, top-1 agreement between the two
files and with the labels, and every float32-layer / float32-kept finding of the check.
Writes benchmarks/results/fp16_readiness.json and .md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/fp16_readiness.py
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torchvision
from common import command_line, machine_info, machine_summary, publish_results

from prunefx.assets import load_imagenet_batch, mobilenet_v2_weights_path
from prunefx.graph import capture
from prunefx.runtime import OnnxRuntimeSession, export_onnx, lower_to_float16
from prunefx.runtime.check.readiness import check_file

NAME = "fp16_readiness"


def main() -> int:
    images, labels = load_imagenet_batch(224)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_v2_weights_path(), weights_only=True))
    program = capture(model.eval(), images[:1], name="mobilenet_v2")
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(program, Path(folder) / "fp32.onnx").path
        fp16 = lower_to_float16(fp32, Path(folder) / "fp16.onnx")
        logits = {name: np.concatenate([OnnxRuntimeSession(path, threads=2).run(x.unsqueeze(0))[0] for x in images])
                  for name, path in (("fp32", fp32), ("fp16", fp16))}
        readiness = check_file(fp16, "trt11").as_dict()
    top1 = {name: values.argmax(1) for name, values in logits.items()}
    findings = [f for f in readiness["findings"] if f["rule"] in ("float32-layer", "float32-kept")]
    row = {"images": len(labels),
           "max_abs_logit_difference": float(np.abs(logits["fp16"] - logits["fp32"]).max()),
           "max_abs_fp32_logit": float(np.abs(logits["fp32"]).max()),
           "top1_agreement": int((top1["fp16"] == top1["fp32"]).sum()),
           "top1_correct": {name: int((values == labels.numpy()).sum()) for name, values in top1.items()},
           "check_errors": readiness["errors"], "float32_layers": [f for f in findings if f["severity"] != "info"],
           "float32_kept": dict(Counter(f["op"] for f in findings if f["severity"] == "info"))}
    info = machine_info(threads=2)
    markdown = (f"# FP16 lowering: ONNX Runtime parity and TensorRT 11 readiness\n\n`{command_line()}`\n\n"
                f"{machine_summary(info)}; MobileNetV2 (torchvision ImageNet weights), 224x224, no timing.\n\n"
                f"- largest |FP16 - FP32| logit: {row['max_abs_logit_difference']:.4f} (largest |FP32 logit| "
                f"{row['max_abs_fp32_logit']:.2f}: {row['max_abs_logit_difference'] / row['max_abs_fp32_logit']:.2e} "
                "relative)\n"
                f"- top-1 agreement FP16 vs FP32: {row['top1_agreement']} of {row['images']}; correct: FP32 "
                f"{row['top1_correct']['fp32']}, FP16 {row['top1_correct']['fp16']} of {row['images']}\n"
                f"- `prunefx check --target trt11` on the FP16 file: {row['check_errors']} errors, "
                f"{len(row['float32_layers'])} layers reading FP32; kept in FP32 on purpose: "
                f"{row['float32_kept'] or 'none'}\n")
    return publish_results(NAME, {"machine": info, "model": "mobilenet_v2", **row}, markdown)


if __name__ == "__main__":
    sys.exit(main())
