"""The width multiple a backend runs fastest: what a pruned channel count should be rounded to.

Widths matter more than MACs, and the multiple is a property of the target, so the budget measurers carry it
(`round_to`, passes/budget/measurement.py) and prune_to_budget uses it unless the user names one: ONNX
Runtime on a CPU 16 with AVX-512 and 8 otherwise (its blocked NCHWc kernels hold one SIMD register of float32
channels; read from /proc/cpuinfo), TensorRT 8 (FP16, TF32) or 32 (INT8), PyTorch on CUDA 8 (NVIDIA's
documented rule; benchmarks/gpu_speedup.py's width multiples row measures 8 to 64). Each backend states its
multiple (runtime/backends/). The table and why: docs/latency-budgets.md, 'The rounding multiple comes from the
backend'.
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
