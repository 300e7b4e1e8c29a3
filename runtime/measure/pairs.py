"""Latency budgets measured where the model will run, on any registered backend (runtime/backends/).

The budget passes (prune_to_budget, depth_to_budget, choose_for_budget) take a Measurer
(passes/budget/measurement.py): `(before, after) -> (before ms, after ms, spread)`, with a `confirm` method (the same
measurement, longer, with an interval on the speed-up where the backend's timing gives one) that alone
accepts a candidate, and `round_to`, the width multiple the backend runs fastest. A budget stated for a GPU
deployment must be met on that GPU: widths, merged blocks and INT8 pay off differently there than on a CPU.
This module is the facade commands and the library call: it reads the registry, so it names no backend.
Every pair checks that its backend is installed when it is made: a missing TensorRT or GPU is a one-line
error before any model is loaded, never after minutes of search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunefx.runtime import backends
from prunefx.runtime.backends.base import CONFIRM_FACTOR, Backend, Settings
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.speedup import Measure, PairMeasurer
from prunefx.runtime.onnx.opsets import DEFAULT_OPSET


def require_backend(backend: str, precision: str | None = None, trtexec: str | None = None, *,
                    batch: int = 1, compile: bool = False) -> Backend:
    """The backend, after checking now that it can measure a budget at `precision` (None: its default) and
    `batch` (BackendUnavailableError naming what to install, MeasurementError for a bad choice). Called by
    latency_pair, and by commands before they load a model."""
    chosen = backends.get(backend, budgets=True)
    chosen.require(Settings(precision=precision, batch=batch, trtexec=trtexec, compile=compile))
    return chosen


@dataclass(frozen=True)
class Measurement:
    """Where and how a run measures latency: a backend's name and its settings (precision resolved), built
    once, checked when built, and handed whole to what measures: budgets, their latency tables, passes that
    keep only what runs faster."""

    backend: str
    settings: Settings = field(default_factory=Settings)

    @classmethod
    def of(cls, backend: str, *, threads: int, runs: int, warmup: int = 10, precision: str | None = None,
           trtexec: str | None = None, cache_dir: str | None = None, batch: int = 1,
           compile: bool = False, sparse: bool = False, opset: int = DEFAULT_OPSET, spinning: bool = True,
           flush_denormals: bool | None = None, rounds: int = Settings.rounds) -> Measurement:
        """`threads` is read by ONNX Runtime, `trtexec` by trtexec, `cache_dir` by TensorRT, `compile`
        (torch.compile first) by cuda, `sparse` (2:4 sparse kernels) by TensorRT and trtexec; `spinning`,
        `flush_denormals` (None: as every timing, runtime/ort/runners.timing_flushes_denormals) and `rounds` (the
        fresh processes a confirmation spreads its runs over) by ONNX Runtime. A backend that cannot measure so
        is refused now, in one line."""
        for name, value, least in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
            _require_count(name, value, least)
        chosen = require_backend(backend, precision, trtexec, batch=batch, compile=compile)
        _require_count("batch", batch, 1)  # after the backend's own refusal, which says what it measures
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise MeasurementError(f"a confirmation spreads its runs over at least 1 process, not rounds={rounds!r}")
        settings = Settings(runs=runs, warmup=warmup, precision=precision or chosen.default_precision, batch=batch,
                            threads=threads, trtexec=trtexec, cache_dir=cache_dir, compile=compile, sparse=sparse,
                            opset=opset, spinning=spinning, flush_denormals=flush_denormals, rounds=rounds)
        asked = settings.set_apart("compile", "trtexec", "spinning", "flush_denormals", "rounds")
        unread = [name for name in asked if name not in chosen.options]
        if unread:  # the report would say it measured so
            raise MeasurementError(f"the {chosen.name} backend does not read {unread[0]}: it applies to "
                                   f"{', '.join(b.name for b in backends.backends() if unread[0] in b.options)}")
        if sparse and "sparse" not in chosen.options:
            raise MeasurementError(f"the {chosen.name} backend has no 2:4 sparse kernels to measure with: "
                                   f"sparse applies to {', '.join(b.name for b in backends.backends(budgets=True) if 'sparse' in b.options)}")
        return cls(chosen.name, settings)

    def pair(self) -> PairMeasurer:
        """A `(before, after) -> (before ms, after ms, spread)` callable, with `confirm` (CONFIRM_FACTOR x the
        runs, twice the warm-up) and `round_to`."""
        return backends.get(self.backend, budgets=True).latency_pair(self.settings)

    def speedup(self) -> Measure:
        """`(before, after) -> speed-up of after over before`: what passes that keep only what runs faster
        (merge_blocks, linearize_blocks) are handed."""
        return backends.get(self.backend, budgets=True).speedup(self.settings)


def _require_count(name: str, value, least: int) -> None:
    """An integer of at least `least`: a 0 is not read as a default, a 2.5 or True not as a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MeasurementError(f"a latency measurement's {name} must be an integer >= {least}, not {value!r}")


def latency_pair(backend: str, **settings) -> PairMeasurer:
    """Measurement.of(backend, **settings).pair(): the latency pair of `backend` at those settings."""
    return Measurement.of(backend, **settings).pair()


def speedup_measure(backend: str, **settings) -> Measure:
    """Measurement.of(backend, **settings).speedup()."""
    return Measurement.of(backend, **settings).speedup()


__all__ = ["CONFIRM_FACTOR", "Measurement", "latency_pair", "require_backend", "speedup_measure"]
