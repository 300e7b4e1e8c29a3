"""Torch-TensorRT: each Program compiled directly (no ONNX file) and timed with CUDA events.

Compiled modules are cached by Program fingerprint (there is no file to hash): compiling takes longer than
timing, and the dense model is measured against every candidate.
"""

from __future__ import annotations

from prunefx.graph import Program
from prunefx.graph.fingerprint import fingerprint
from prunefx.graph.int8.quantization import has_fake_quant
from prunefx.runtime.backends.base import BenchModel, Settings
from prunefx.runtime.backends.facts import TorchTensorRTFacts
from prunefx.runtime.backends.gpu_pair import gpu_timing, pair_of
from prunefx.runtime.backends.tensorrt_common import TensorRTFamily
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.last_used import LastUsed
from prunefx.runtime.measure.measured_files import deployed
from prunefx.runtime.measure.speedup import PairMeasurer
from prunefx.runtime.tensorrt.engine import free_gpu_cache, require_cuda
from prunefx.runtime.tensorrt.torch_compiled import compile_torch_tensorrt, require_torch_tensorrt


class TorchTensorRTBackend(TorchTensorRTFacts, TensorRTFamily):
    needs = "the `torch_tensorrt` Python package (built for your torch) and an NVIDIA GPU with CUDA"
    reads = "program"
    # INT8 needs ModelOpt's Q/DQ here; prunefx's fake quantizers would be timed as float operators
    int8_refusal = "Torch-TensorRT runs no INT8 kernels for prunefx's quantizers (ONNX Runtime and TensorRT do)"
    options = frozenset({"sparse"})

    def check_installed(self, settings: Settings) -> None:
        require_torch_tensorrt()
        require_cuda()

    def software(self, settings: Settings) -> str:
        return f"Torch-TensorRT {require_torch_tensorrt().__version__}"

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        precision = settings.precision or self.default_precision
        compiled = _Compiled(precision, settings.batch, settings.sparse)
        return self.stamped(pair_of(compiled, gpu_timing(lambda entry: entry[0].time_once), settings,
                                    self.width_multiple(precision), int8_refusal=self.int8_refusal_at(settings)),
                            settings)

    def runner(self, model: BenchModel, settings: Settings):
        _refuse_fake_quantizers(model.program)
        return compile_torch_tensorrt(model.program, precision=settings.precision or self.default_precision,
                                      sparse=settings.sparse).time_once


class _Compiled:
    """Torch-TensorRT modules by Program fingerprint, each compiled once at the pair's batch; the two used last
    stay on the GPU (measure/last_used.LastUsed)."""

    def __init__(self, precision: str, batch: int, sparse: bool = False):
        self.precision, self.batch, self.sparse = precision, batch, sparse
        self.modules = LastUsed(freed=free_gpu_cache)

    def close(self) -> None:
        """Every compiled module off the GPU (a later `get` compiles it again)."""
        self.modules.clear()

    def get(self, program: Program) -> tuple:
        key = fingerprint(program)
        return self.modules.get(key, lambda: (self._compiled(program), key))

    def _compiled(self, program: Program):
        _refuse_fake_quantizers(program)
        return compile_torch_tensorrt(deployed(program, self.batch), precision=self.precision, sparse=self.sparse)


def _refuse_fake_quantizers(program: Program) -> None:
    """Torch-TensorRT has no converter for fake quantizers: they would run, and be timed, as float operators."""
    if has_fake_quant(program.graph):
        raise MeasurementError(f"Torch-TensorRT does not time '{program.name}' as INT8 (fake quantizers): "
                               "use --backend trt, which builds INT8 from its Q/DQ nodes")


BACKEND = TorchTensorRTBackend()
