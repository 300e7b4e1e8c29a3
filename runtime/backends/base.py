"""What a latency backend is: the one type that budgets, `bench`, `profile`, reports and the CLI read.

A backend says who it is (`name`, `label`), what it needs installed (`needs`, and `require`, which checks it
in one line before any model is loaded), the precisions it measures at, its width multiple per precision,
the latency pair the budget passes use (runtime/measure/speedup.PairMeasurer), the speed-up measure handed to passes
that keep only what runs faster, and how `bench` and `profile` time a model. Each backend is one file in
this package, collected by the registry (runtime/backends/__init__.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunefx.graph import Program
from prunefx.runtime.backends.facts import Facts
from prunefx.runtime.backends.settings import Settings
from prunefx.runtime.errors import BackendUnavailableError, MeasurementError
from prunefx.runtime.measure import gpu_latency
from prunefx.runtime.measure.gpu_latency import compare_gpu_latency, measure_gpu_latency
from prunefx.runtime.measure.latency import compare_latency, measure_latency
from prunefx.runtime.measure.measured_files import deployed, exported_file
from prunefx.runtime.measure.speedup import Measure, PairMeasurer, speedup_of
from prunefx.runtime.tensorrt.layer_profile import LayerProfile

CPU_BACKEND = "ort"  # what a machine without the backend's GPU or TensorRT can measure on
CONFIRM_FACTOR = 4  # a pair's `confirm` times this many times the runs (as ONNX Runtime's does)


@dataclass
class BenchModel:
    """A model as `bench` and `profile` hand it to a backend: the reference the user gave, the Program
    (None for a bare .onnx file), the ONNX file (for backends that read ONNX), inputs at the batch, and INT8
    calibration batches for a TensorRT build of a file without Q/DQ nodes."""

    reference: str
    program: Program | None
    onnx: Path | None
    inputs: list[torch.Tensor] = field(default_factory=list)
    calibration: list | None = None


class Backend(Facts):
    """One latency backend. Subclasses set the class attributes (those of Facts too: a shipped backend derives
    from its facts, facts.py) and override what they support."""

    needs: str = ""               # what must be installed, for the docs table and help
    # what steers a budget's width search by default: "macs", or "latency" (a per-layer table timed here)
    channel_choice: str = "macs"
    reads: str = "onnx"           # what bench hands it: "onnx" (an exported file) or "program"
    # the ONNX lowering of a quantized Program it reads (runtime/onnx/quantized.py; None: this CPU's ONNX Runtime one)
    int8_lowering: str | None = None
    gpu_timed: bool = False       # its runners time themselves with CUDA events (return milliseconds)
    times_on_cpu: bool = False    # it times on this machine's cores, which other processes can take (machine_load.py)
    # why a budget's INT8 candidates cannot be measured like for like here (None: they can)
    int8_refusal: str | None = None
    max_batch: int | None = None  # None: any batch the Program can be cut to
    float32_only: bool = False    # times a model in the precision it holds, and states float32 (the CPU runtimes)
    options: frozenset[str] = frozenset()  # Settings fields beyond runs/warmup/precision/batch it reads
    reads_warmup: bool = True  # False where the backend keeps its own warm-up (trtexec's, in milliseconds)

    # ---- checks ------------------------------------------------------------------------------------

    def require(self, settings: Settings, *, purpose: str = "budget") -> str:
        """The precision to measure at, after checking `settings` and that the backend is installed
        (MeasurementError for a bad choice, BackendUnavailableError naming what to install), in one line."""
        precision = settings.precision or self.default_precision
        allowed = self.precisions if purpose == "budget" else (self.bench_precisions or self.precisions)
        if precision not in allowed:
            raise MeasurementError(self.precision_refusal(precision, allowed))
        if settings.batch < 1:
            raise MeasurementError(f"a batch size is at least 1, not {settings.batch}")
        if self.max_batch is not None and settings.batch > self.max_batch:
            raise MeasurementError(f"the {self.name} backend measures at batch {self.max_batch} only, not "
                                   f"{settings.batch}")
        try:
            self.check_installed(settings)
        except BackendUnavailableError as missing:
            if purpose == "profile" or self.name == CPU_BACKEND:  # profile has no CPU backend to point to
                raise
            raise BackendUnavailableError(f"{missing}; --backend {CPU_BACKEND} measures on this machine's CPU") from None
        return precision

    def precision_refusal(self, precision: str, allowed: Sequence[str]) -> str:
        return f"the {self.name} backend measures at {' or '.join(allowed)}, not {precision!r}"

    def check_installed(self, settings: Settings) -> None:
        """Raise BackendUnavailableError when what the backend needs is missing."""

    def int8_refusal_at(self, settings: Settings) -> str | None:
        """Why INT8 candidates are not measured at these settings (None: they are); the class's reason by default."""
        return self.int8_refusal

    def software(self, settings: Settings) -> str:
        """The version of what measures beyond torch (TensorRT's, trtexec's), where the backend has one: part of
        a latency table's cache key, so that an upgrade times the layers again."""
        return ""

    def width_multiple(self, precision: str) -> int:
        raise MeasurementError(f"no width multiple known for backend {self.name!r} at precision {precision!r}")

    def width_text(self) -> str:
        """The width multiples per precision, for the docs table."""
        return ", ".join(f"{precision}: {self.width_multiple(precision)}" for precision in self.precisions)

    # ---- budgets and passes ------------------------------------------------------------------------

    def latency_pair(self, settings: Settings) -> PairMeasurer:
        """The budget passes' Measurer: `(dense, candidate) -> (dense ms, candidate ms, spread)`, `confirm`,
        `round_to`. Called after `require`."""
        raise MeasurementError(f"the {self.name} backend does not measure budgets")

    def stamped(self, pair: PairMeasurer, settings: Settings) -> PairMeasurer:
        """`pair` marked as measuring on this backend with `settings`: what a budget's report then states, whoever
        made the measurer (prunefx.meet_budget)."""
        pair.measured_as = (self.name, settings)
        return pair

    def speedup(self, settings: Settings) -> Measure:
        """`(before, after) -> speed-up of after over before`, for passes that keep only what runs faster:
        the latency pair's short measurement."""
        return speedup_of(self.latency_pair(settings))

    # ---- bench and profile -------------------------------------------------------------------------

    def runner(self, model: BenchModel, settings: Settings) -> Callable[[], object]:
        """A zero-argument runner of `model`: one that returns its own milliseconds when `gpu_timed`."""
        raise MeasurementError(f"the {self.name} backend has no runner for bench")

    def bench(self, models: Sequence[BenchModel], settings: Settings) -> dict:
        """`latency` statistics for one model, or `a`, `b` and the speed-up for two timed alternately."""
        return self.time_runners([self.runner(model, settings) for model in models], settings)

    def time_runners(self, runners: Sequence[Callable[[], object]], settings: Settings) -> dict:
        """One runner's `latency`, or two timed alternately (CUDA events where `gpu_timed`)."""
        timing = dict(warmup=settings.warmup, runs=settings.runs)
        if self.gpu_timed:
            warm = getattr(getattr(self, "device", None), "warm_seconds", gpu_latency.WARM_SECONDS)
            if len(runners) == 1:
                return {"latency": measure_gpu_latency(runners[0], warm_seconds=warm, **timing).to_dict()}
            return compare_gpu_latency(*runners, warm_seconds=warm, **timing).to_dict()
        if len(runners) == 1:
            return {"latency": measure_latency(runners[0], threads=settings.threads, **timing).to_dict()}
        return compare_latency(*runners, threads=settings.threads, **timing).to_dict()

    def time_program(self, program: Program, settings: Settings) -> dict:
        """Latency statistics (median_ms, p90_ms, ...) of `program` alone at `settings.batch`: a small module
        (one layer captured as a Program) timed the way `bench` times a model. Called after `require`."""
        program = deployed(program, settings.batch)
        with tempfile.TemporaryDirectory(prefix="prunefx-time-") as tmp:
            path = None
            if self.reads == "onnx":  # the TorchScript exporter: far quicker than dynamo on small modules
                path, _ = exported_file(program, Path(tmp) / "module.onnx", settings.batch, "torchscript",
                                        activations=self.int8_lowering)
            model = BenchModel(program.name, program, path, list(program.example_inputs))
            return self.bench([model], settings)["latency"]

    def profile(self, model: BenchModel, settings: Settings) -> LayerProfile:
        raise MeasurementError(f"the {self.name} backend has no per-layer profile")

    @property
    def profiles(self) -> bool:  # a shipped backend states it in its facts, for the flags made without it
        return type(self).profile is not Backend.profile

    def __repr__(self) -> str:
        return f"<backend {self.name}: {self.label}>"
