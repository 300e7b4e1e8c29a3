"""2:4 semi-structured sparse linear layers on NVIDIA GPUs, and their measured speed-up.

Turns a 2:4 weight (the layout sparsify_nm produces) into PyTorch's semi-structured form, in fp16 or bf16 on
an Ampere or later GPU (8.0+; on Hopper only cuSPARSELt), and times dense against sparse `F.linear` with CUDA
events, alternately, as many calls per event pair as last a millisecond (one call per pair would mostly time
the launch). Without
such a device every entry point raises SemiStructuredUnavailable. What the kernels gain, eager and from a
CUDA graph: docs/benchmarks/sparsity.md. Not here: TensorRT's sparse tactics, convolutions (PyTorch has no
semi-structured convolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunefx.graph.errors import PrunefxError
from prunefx.graph.sparsity.nm_masks import Pattern, grouped_matrix, magnitude_mask, pattern_violations
from prunefx.runtime.cuda.graph import CudaDevice, graph_replay
from prunefx.runtime.measure.gpu_latency import BackToBack, compare_gpu_latency
from prunefx.runtime.measure.latency import LatencyStats

TWO_FOUR = Pattern(2, 4)
_DTYPES = (torch.float16, torch.bfloat16)


class SemiStructuredUnavailable(PrunefxError):
    """No CUDA device with sparse tensor cores, or a weight that cannot be made semi-structured."""


def require_sparse_gpu() -> torch.device:
    """The current CUDA device, if it has sparse tensor cores (compute capability 8.0+)."""
    if not torch.cuda.is_available():
        raise SemiStructuredUnavailable("2:4 semi-structured sparsity needs a CUDA GPU (Ampere or later); "
                                        "torch.cuda.is_available() is False")
    device = torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.get_device_capability(device) < (8, 0):
        raise SemiStructuredUnavailable(f"{torch.cuda.get_device_name(device)} has compute capability "
                                        f"{torch.cuda.get_device_capability(device)}; sparse tensor cores need 8.0+")
    return device


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the 2:4 magnitude mask applied (unchanged when it already obeys 2:4)."""
    return weight * magnitude_mask(grouped_matrix(weight), TWO_FOUR).reshape(weight.shape)


def semi_structured(weight: torch.Tensor, *, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """A 2:4 weight [out, in] as a semi-structured sparse tensor in `dtype` on the GPU."""
    device = require_sparse_gpu()
    if dtype not in _DTYPES:
        raise SemiStructuredUnavailable(f"semi-structured weights are float16 or bfloat16, not {dtype}")
    if weight.dim() != 2:
        raise SemiStructuredUnavailable(f"only linear weights [out, in] go semi-structured, not shape "
                                        f"{tuple(weight.shape)}")
    if pattern_violations(weight, TWO_FOUR):
        raise SemiStructuredUnavailable(f"weight of shape {tuple(weight.shape)} breaks 2:4 in "
                                        f"{pattern_violations(weight, TWO_FOUR)} groups; sparsify it first")
    dense = weight.detach().to(device=device, dtype=dtype).contiguous()
    try:
        return torch.sparse.to_sparse_semi_structured(dense)
    except (RuntimeError, ValueError) as error:  # shape constraints of the sparse kernels
        raise SemiStructuredUnavailable(f"weight of shape {tuple(weight.shape)} cannot go semi-structured: "
                                        f"{str(error).splitlines()[0]}") from error


@dataclass(frozen=True)
class LinearTiming:
    """Dense against semi-structured F.linear on the same input: per-call latency, alternately measured."""

    rows: int
    in_features: int
    out_features: int
    dense: LatencyStats
    sparse: LatencyStats
    max_abs_difference: float
    max_abs_output: float  # of the dense F.linear: fp16 resolves ~1e-3 of it, so differences are judged against it

    @property
    def relative_difference(self) -> float:
        return self.max_abs_difference / self.max_abs_output

    @property
    def speedup(self) -> float:
        return self.dense.median_ms / self.sparse.median_ms

    def to_dict(self) -> dict:
        return {"rows": self.rows, "in_features": self.in_features, "out_features": self.out_features,
                "dense": self.dense.to_dict(), "sparse": self.sparse.to_dict(), "speedup": self.speedup,
                "max_abs_difference": self.max_abs_difference, "relative_difference": self.relative_difference}


def time_linear(weight: torch.Tensor, rows: int, *, bias: torch.Tensor | None = None, dtype=torch.float16,
                warmup: int = 20, runs: int = 100, calls_per_run: int | None = None, seed: int = 0) -> LinearTiming:
    """Time F.linear(x, W) dense and semi-structured for x of `rows` rows, W = the 2:4 version of `weight`."""
    device = require_sparse_gpu()
    dense_weight = two_four(weight.detach()).to(device=device, dtype=dtype).contiguous()
    sparse_weight = semi_structured(dense_weight, dtype=dtype)
    bias = None if bias is None else bias.detach().to(device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, weight.shape[1], device=device, dtype=dtype, generator=generator)
    with torch.inference_mode():
        expected = F.linear(x, dense_weight, bias)
        difference = float((expected - F.linear(x, sparse_weight, bias)).abs().max())
        dense, sparse = _alternate(lambda: F.linear(x, dense_weight, bias), lambda: F.linear(x, sparse_weight, bias),
                                   warmup=warmup, runs=runs, calls_per_run=calls_per_run)
    return LinearTiming(rows, weight.shape[1], weight.shape[0], dense, sparse, difference,
                        float(expected.abs().max()))


def time_callables(dense_fn, sparse_fn, *, warmup: int = 20, runs: int = 100, calls_per_run: int | None = None
                   ) -> tuple[LatencyStats, LatencyStats]:
    """Alternately time two zero-argument GPU callables (e.g. a dense and a sparse MLP block)."""
    require_sparse_gpu()
    with torch.inference_mode():
        return _alternate(dense_fn, sparse_fn, warmup=warmup, runs=runs, calls_per_run=calls_per_run)


def cuda_graphed(fn, *, warmup: int = 3):
    """`fn` (a zero-argument GPU callable) captured once in a CUDA graph; the returned callable replays it. A
    replay launches the recorded kernels with no Python, dispatch or per-call library setup, so timing it shows
    what the kernels cost once the host is out of the way (as under `torch.compile(mode="reduce-overhead")` or
    in a TensorRT engine). Warm-up runs on a side stream first, as CUDA graph capture requires."""
    require_sparse_gpu()
    return graph_replay(fn, warmup=warmup)


def _alternate(dense_fn, sparse_fn, *, warmup: int, runs: int, calls_per_run: int | None):
    """Both sampled as every GPU timing in prunefx is (runtime/cuda/graph.py, runtime/measure/gpu_latency.py):
    back-to-back calls between one pair of events (as many as last gpu_latency.SAMPLE_MS, or `calls_per_run`),
    alternately, after a warm-up until settled."""
    device = CudaDevice()

    def sampler(fn):
        if calls_per_run:
            return lambda: device.time(fn, calls_per_run)
        sampler = BackToBack(timer=lambda run, calls, _stream: device.time(run, calls))
        return lambda: sampler(fn)

    comparison = compare_gpu_latency(sampler(dense_fn), sampler(sparse_fn), warmup=warmup, runs=runs,
                                     warm_seconds=device.warm_seconds)
    return comparison.a, comparison.b
