"""What INT8 attention costs in accuracy: the Fashion-MNIST ViT of benchmarks/int8_latency.py (the same cached
trained model, the same 8 calibration batches of epoch 0), quantized with `quantize_int8` with attention kept in
float (`attention: False`: Q/DQ on the linear layers and residual adds only) and with INT8 attention (the default:
Q, Kᵀ, V and the softmax output quantized too), after PTQ and after --qat-steps of quantization-aware
training (KD from the FP32 model, as int8_latency's QAT rows). Accuracy is the fake-quantized Program's top-1
on the Fashion-MNIST test set (the TensorRT file computes the same, runtime/onnx/quantized.py's parity tests);
each INT8 row also counts, in the TensorRT file (model_trt.onnx's lowering), the Conv/Gemm/MatMul that have a
DequantizeLinear on both inputs, and `prunefx check --target trt11`'s errors on it.
Writes benchmarks/results/int8_attention.json and .md.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/int8_attention.py [--qat-steps 60] [--train-epochs 1]
        [--train-steps N --test-images M]   # a shorter run (not int8_latency's cached model) on a loaded machine
        [--save-dense FILE | --dense-from FILE]

--save-dense writes the trained ViT's weights and the calibration batches to FILE (torch.save); --dense-from
quantizes them instead of training and reading its own, so that two versions of the passes can be compared on
the same trained model. The QAT rows still train through the current data path.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from common import command_line, machine_info, machine_summary, markdown_table, publish_results
from int8_latency import FASHION_MNIST_BATCH, _kd, calibration_batches, trained_fashion_mnist

from prunefx.data.splits import fashion_mnist_data
from prunefx.graph import capture
from prunefx.models import build_model
from prunefx.passes.distill import distill
from prunefx.passes.quantize_int8 import quantize_int8
from prunefx.runtime.check.readiness import check_model
from prunefx.runtime.check.rules import GraphIndex
from prunefx.runtime.onnx.quantized import export_quantized_onnx

NAME = "int8_attention"
MODEL = "vit_tiny_fmnist"


def accuracy(program, data, limit: int) -> float:
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in itertools.islice(data.test, -(-limit // FASHION_MNIST_BATCH)):
            keep = labels >= 0  # the loader pads the last batch with label -1
            predicted = program(inputs).argmax(1)
            correct += int((predicted[keep] == labels[keep]).sum())
            total += int(keep.sum())
    return correct / total


def tensorrt_file_counts(program) -> dict:
    """INT8 layers (a DequantizeLinear on both inputs) and prunefx check's errors in the TensorRT file."""
    with tempfile.TemporaryDirectory() as folder:
        path = export_quantized_onnx(program, Path(folder) / "model_trt.onnx", activations="s8").path
        model = onnx.load(str(path))
    index = GraphIndex(model)
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    int8 = [node for node in layers if all(index.dequantized(name) for name in node.input[:2])]
    return {"layers": len(layers), "int8_layers": len(int8), "check_errors": check_model(model, "trt11").count("error")}


def trained_steps(data, steps: int, seed: int = 0):
    """The ViT trained `steps` SGD steps, with int8_latency's schedule (a shorter run than its one epoch)."""
    torch.manual_seed(seed)
    program = capture(build_model(f"prunefx:{MODEL}").module, next(iter(data.train))[0], name=MODEL)
    return distill(program, config={"data": data.train, "steps": steps, "kd_weight": 0.0, "seed": seed,
                                    "warmup_steps": steps // 4, "optimizer": "sgd", "lr": 0.1,
                                    "weight_decay": 5e-4, "momentum": 0.9, "progress": False}).program.eval()


def dense_from(path: Path, data) -> tuple:
    """A freshly captured ViT carrying the weights saved in `path`, and the calibration batches saved with them."""
    saved = torch.load(path, weights_only=True)
    program = capture(build_model(f"prunefx:{MODEL}").module, next(iter(data.train))[0], name=MODEL)
    program.module.load_state_dict(saved["weights"])
    return program.eval(), [tuple(batch) for batch in saved["calibration"]]


def trained(args) -> str:
    if args.dense_from:
        return f"the ViT's trained weights and calibration batches read from {args.dense_from}"
    return f"the ViT trained {args.train_steps or args.train_epochs} {'steps' if args.train_steps else 'epochs'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs the ViT trains (1, cached)")
    parser.add_argument("--qat-steps", type=int, default=60, help="KD steps of quantization-aware training (60)")
    parser.add_argument("--train-steps", type=int, help="train this many SGD steps instead of --train-epochs "
                        "(a shorter run on a loaded machine; not cached)")
    parser.add_argument("--test-images", type=int, default=10000, help="test images the accuracy is read on")
    parser.add_argument("--seed", type=int, default=0, help="with --train-steps: the ViT's initialisation and "
                        "data order (0, the published run; others measure how far a figure moves with the seed)")
    parser.add_argument("--save-dense", type=Path, help="write the trained ViT's weights and the calibration "
                        "batches to FILE (torch.save), for --dense-from at another commit")
    parser.add_argument("--dense-from", type=Path, help="quantize the ViT and calibration batches FILE holds "
                        "(written by --save-dense) instead of training and reading them")
    args = parser.parse_args()
    if args.dense_from and not args.dense_from.is_file():
        parser.error(f"--dense-from: no file {args.dense_from}")
    if args.seed and args.train_steps is None:
        parser.error("--seed needs --train-steps (the cached one-epoch model is seed 0)")
    torch.set_num_threads(2)
    data = fashion_mnist_data(FASHION_MNIST_BATCH, augment=True)
    if args.dense_from:
        dense, batches = dense_from(args.dense_from, data)
    else:
        batches = calibration_batches(data)  # before training, which leaves the loader on its last epoch
        dense = trained_fashion_mnist(MODEL, data, args.train_epochs) if args.train_steps is None else \
            trained_steps(data, args.train_steps, args.seed)
    if args.save_dense:
        torch.save({"weights": dense.state_dict(), "calibration": [list(batch) for batch in batches]}, args.save_dense)
    rows = [{"variant": "fp32", "attention": "float", "accuracy": accuracy(dense, data, args.test_images)}]
    for attention in (False, True):
        started = time.perf_counter()
        ptq = dense.clone().eval()
        stats = quantize_int8(ptq, config={"calibration": batches, "attention": attention}).stats
        counts = tensorrt_file_counts(ptq)
        rows.append({"variant": "int8 PTQ", "attention": "int8" if attention else "float",
                     "accuracy": accuracy(ptq, data, args.test_images), "quantized_layers": len(stats["quantized"]), **counts})
        qat = _kd(ptq.clone(), dense, data, args.qat_steps, 0.001)
        rows.append({"variant": f"int8 QAT ({args.qat_steps} steps)", "attention": "int8" if attention else "float",
                     "accuracy": accuracy(qat, data, args.test_images), "quantized_layers": len(stats["quantized"]), **counts})
        print(f"attention {'int8' if attention else 'float'}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    info = machine_info(threads=2, qat_steps=args.qat_steps, train_epochs=args.train_epochs,
                        train_steps=args.train_steps, test_images=args.test_images, seed=args.seed,
                        dense_from=str(args.dense_from) if args.dense_from else None)
    table = markdown_table(
        ("variant", "attention", "top-1 %", "INT8 Conv/Gemm/MatMul in the TensorRT file", "check errors (trt11)"),
        [(row["variant"], row["attention"], f"{100 * row['accuracy']:.2f}",
          f"{row['int8_layers']} of {row['layers']}" if "layers" in row else "-", row.get("check_errors", "-"))
         for row in rows])
    markdown = (f"# INT8 attention on the Fashion-MNIST ViT\n\n`{command_line()}`\n\n{machine_summary(info)}; "
                f"accuracy only (no timing), on the first {args.test_images} test images; {trained(args)}.\n\n" + table + "\n")
    return publish_results(NAME, {"machine": info, "model": MODEL, "rows": rows}, markdown)


if __name__ == "__main__":
    sys.exit(main())
