"""What a latency backend is called, where it is listed and what it measures at: what the command line's
`--backend` and `--precision` offer, and what the registry lists and filters backends by. Every backend is
a Facts (base.Backend derives from it); the shipped ones' are here, importing nothing, so that a command's
flags are made without importing a backend (each imports torch, ONNX Runtime or TensorRT). Each shipped
backend's class (runtime/backends/NAME.py) derives from its facts below."""

from __future__ import annotations


class Facts:
    name: str = ""
    label: str = ""               # the human name reports print ("measured on ONNX Runtime")
    rank: int = 50                # where it is listed (the default backend first)
    precisions: tuple[str, ...] = ("fp32",)        # what a budget is measured at
    bench_precisions: tuple[str, ...] | None = None  # what bench/profile accept (default: `precisions`)
    default_precision: str = "fp32"
    budgets: bool = True          # offers a latency pair for --speedup/--latency-ms
    profiles: bool = False        # has a per-layer profile (`prunefx profile`)


class OnnxRuntimeFacts(Facts):
    name, label, rank = "ort", "ONNX Runtime", 0
    profiles = True


class TensorRTFamilyFacts(Facts):
    # INT8 is not a budget precision: it comes from the Program's own quantizers (Q/DQ nodes)
    precisions = ("fp32", "fp16")
    bench_precisions = ("fp32", "fp16", "int8")


class TensorRTFacts(TensorRTFamilyFacts):
    name, label, rank = "trt", "TensorRT", 10
    profiles = True


class CudaFacts(Facts):
    name, label, rank = "cuda", "PyTorch on CUDA", 20
    precisions = ("fp16", "bf16")
    default_precision = "fp16"
    profiles = True


class TorchTensorRTFacts(TensorRTFamilyFacts):
    name, label, rank = "torch-trt", "Torch-TensorRT", 30
    bench_precisions = ("fp32", "fp16")


class TrtexecFacts(TensorRTFamilyFacts):
    name, label, rank = "trtexec", "trtexec", 40
    profiles = True


class TorchEagerFacts(Facts):
    name, label, rank = "torch", "torch eager (CPU)", 90
    budgets = False


SHIPPED = (OnnxRuntimeFacts(), TensorRTFacts(), CudaFacts(), TorchTensorRTFacts(), TrtexecFacts(), TorchEagerFacts())
