"""How the compress flow measures: ONNX Runtime threads and runs for the report, where a budget is measured, and
the device the recipe's passes compute on."""

from __future__ import annotations

from dataclasses import dataclass

from prunefx.runtime import LATENCY_THREADS
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET

LATENCY_WARMUP = 10


@dataclass(frozen=True)
class Options:
    """What `compress` measures with: the budget, the stages and the report's latency are timed on `backend` at
    `precision` and `batch` (prunefx/delivered_latency.py)."""

    threads: int = LATENCY_THREADS  # ONNX Runtime threads for the latency measurement
    runs: int = 50             # timed runs per model
    warmup: int = LATENCY_WARMUP
    eval_batches: int | None = None  # evaluate on the first N batches of test and val only
    opset: int = DEFAULT_OPSET
    stage_reports: bool = True  # test score, MACs and latency after every pass (prunefx/reports/stage.py)
    backend: str = "ort"       # where the latency is measured (runtime/measure/pairs.py)
    precision: str = "fp32"    # precision of the measurement on a GPU backend (INT8: the model's Q/DQ)
    trtexec: str | None = None  # the trtexec program for backend "trtexec" (default: on PATH or JetPack's)
    batch: int = 1             # the batch size the latency is measured at
    compile: bool = False      # backend "cuda": torch.compile (inductor) each model before timing it
    device: str | None = None  # where the recipe's passes and the scores compute (prunefx/device.py); None: where the model is


DEFAULTS = Options()
