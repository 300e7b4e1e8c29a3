"""How the calibration method moves INT8 accuracy: dense PTQ of the Fashion-MNIST models of
benchmarks/int8_latency.py (the same cached trained models, the same 8 calibration batches of epoch 0), one row
per `quantize_int8` method, test top-1 of the ONNX Runtime file (lowered for this CPU) on the test images.

Methods: max, percentile at 99.9 / 99.99 / 99.999, mse (the default), entropy. The FP32 file is the reference
row. Writes benchmarks/results/int8_methods.json and .md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_methods.py [--models resnet20 mobilenetv2_small vit_tiny_fmnist]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from common import RESULTS, command_line, machine_info, machine_summary, markdown_table, publish_results
from int8_latency import (
    FASHION_MNIST_BATCH,
    calibration_batches,
    fashion_mnist_test_set,
    test_accuracy,
    trained_fashion_mnist,
)

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph.rebatch import rebatch
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime import OnnxRuntimeSession, export_onnx
from prunefx.runtime.onnx.quantized import export_quantized_onnx, onnxruntime_lowering

NAME = "int8_methods"
METHODS = {"max": {"method": "max"}, "percentile 99.9": {"method": "percentile", "percentile": 99.9},
           "percentile 99.99": {"method": "percentile", "percentile": 99.99},
           "percentile 99.999": {"method": "percentile", "percentile": 99.999},
           "mse": {"method": "mse"}, "entropy": {"method": "entropy"}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2_small", "vit_tiny_fmnist"])
    parser.add_argument("--train-epochs", type=int, default=1, help="which cached trained model (as int8_latency)")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def model_row(name: str, data, batches, images, labels, epochs: int) -> dict[str, float]:
    """{variant: test top-1} for the FP32 file and each method's INT8 file."""
    dense = trained_fashion_mnist(name, data, epochs)
    scores = {}
    with tempfile.TemporaryDirectory(prefix="prunefx-int8-methods-") as tmp:
        scores["fp32"] = test_accuracy(OnnxRuntimeSession(export_onnx(rebatch(dense, 1), Path(tmp) / "fp32.onnx").path,
                                                          threads=1), images, labels)
        for variant, settings in METHODS.items():
            quantized = dense.clone().eval()
            quantize_int8(quantized, config={"calibration": batches, **settings})
            path = export_quantized_onnx(rebatch(quantized, 1), Path(tmp) / "int8.onnx",
                                         activations=onnxruntime_lowering()).path
            scores[variant] = test_accuracy(OnnxRuntimeSession(path, threads=1), images, labels)
            print(f"{name} {variant}: {100 * scores[variant]:.2f}", file=sys.stderr)
    return scores


def markdown(report: dict, info: dict) -> str:
    models = list(report["models"])
    rows = [[variant, *(f"{100 * report['models'][m][variant]:.2f}" for m in models)]
            for variant in ["fp32", *METHODS]]
    return (f"# INT8 calibration methods: Fashion-MNIST test top-1 %\n\n{machine_summary(info)}\n\n"
            f"Command: `{report['command']}`\n\n{report['test_images']} test images; dense PTQ, ONNX Runtime file "
            f"lowered for this CPU ({report['lowering']}); calibration: the first 8 training batches of epoch 0.\n\n"
            + markdown_table(["variant", *models], rows) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = fashion_mnist_data(FASHION_MNIST_BATCH, augment=True)
    batches = calibration_batches(data)
    images, labels = fashion_mnist_test_set(data, args.test_images)
    info = machine_info(threads=1, train_epochs=args.train_epochs)
    report = {"command": command_line(), "lowering": onnxruntime_lowering(), "test_images": len(labels),
              "models": {name: model_row(name, data, batches, images, labels, args.train_epochs)
                         for name in args.models}}
    return publish_results(NAME, report, markdown(report, info), folder=args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
