"""How a backend measures (Settings): runs, warm-up, precision, batch and the options only some backends read.
Torch-free, so that the command line states its defaults (`--warmup`) without importing a backend."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from prunefx.runtime.onnx.opsets import DEFAULT_OPSET
from prunefx.runtime.ort.threads import LATENCY_THREADS


@dataclass(frozen=True)
class Settings:
    """How a backend measures. Every backend reads runs, warmup, precision and batch; the others only where
    the backend lists them in `Backend.options` (the CLI refuses a flag its backend does not read)."""

    runs: int = 50
    warmup: int = 10
    precision: str | None = None   # None: the backend's default_precision
    batch: int = 1
    threads: int = LATENCY_THREADS  # as the commands measure (runtime/ort/threads.py)
    trtexec: str | None = None     # the trtexec program
    cache_dir: str | None = None   # TensorRT's engine cache
    sparse: bool = False           # 2:4 sparse tensor-core kernels
    compile: bool = False          # torch.compile (inductor) before timing
    spinning: bool = True          # ONNX Runtime's worker threads spin between operators
    flush_denormals: bool | None = None
    rounds: int = 4                # ONNX Runtime: fresh processes a side-by-side bench (or a confirmation) spreads its runs over
    opset: int = DEFAULT_OPSET     # of the ONNX files a budget times: the delivered file's

    def with_precision(self, precision: str) -> Settings:
        return replace(self, precision=precision)

    def set_apart(self, *names: str) -> dict:
        """{name: value} of the fields among `names` set away from their defaults (what a backend must read)."""
        defaults = {each.name: each.default for each in fields(self)}
        return {name: getattr(self, name) for name in names if getattr(self, name) != defaults[name]}
