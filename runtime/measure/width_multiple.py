"""The width multiple a backend runs fastest: what a pruned channel count should be rounded to.

Widths matter more than MACs (docs/latency-budgets.md, 'The rounding multiple comes from the backend'). The
multiple is a property of the target, so the budget measurers carry it (`round_to`,
passes/budget/measurement.py) and prune_to_budget uses it unless the user names one:

- ONNX Runtime on a CPU: the blocked (NCHWc) convolution kernels work on one SIMD register of float32
  channels, 16 with AVX-512 and 8 with AVX2 (or anything narrower); read from the CPU's flags in
  /proc/cpuinfo, 8 where they cannot be read.
- TensorRT (trt, torch-trt, trtexec): tensor cores take FP16 (and TF32) channels in multiples of 8, INT8 in
  multiples of 32.
- PyTorch on CUDA (cuda): cuDNN and cuBLAS use tensor cores for FP16 and BF16 channels in multiples of 8.
  This is NVIDIA's documented rule, not a figure measured here: measure it on the GPU you deploy to
  (`prunefx bench --backend cuda` on two widths) before relying on a finer one.

Each backend states its multiple (runtime/backends/); `backends.width_multiple` asks the registry.
"""

from __future__ import annotations

from pathlib import Path

AVX512_MULTIPLE, AVX2_MULTIPLE = 16, 8
TENSOR_CORE_MULTIPLE = {"fp32": 8, "fp16": 8, "int8": 32}
CUDA_TENSOR_CORE_MULTIPLE = {"fp16": 8, "bf16": 8}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's flags from /proc/cpuinfo's text (read here when not given); empty if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def onnxruntime_multiple(cpuinfo: str | None = None) -> int:
    """16 on a CPU with AVX-512 (avx512f), else 8."""
    return AVX512_MULTIPLE if "avx512f" in cpu_flags(cpuinfo) else AVX2_MULTIPLE
