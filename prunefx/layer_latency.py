"""A Program's per-layer latency table, timed on a backend: what channel selection spends importance against
(remove_channels' `latency_table`), for a budget's width search (meet_budget with choose_by="latency") or for a
MACs, parameter or channel target (`prunefx prune --macs F --choose-by latency`).

    table = prunefx.latency_table(program, backend="cuda", batch=32)
    remove_channels(program, config={"macs": 0.5, "latency_table": table})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunefx.device import current_gpu
from prunefx.graph import Program
from prunefx.graph.errors import PrunefxError
from prunefx.graph.placement import module_device
from prunefx.graph.program import require_program
from prunefx.models.input_shapes import check_input_shape
from prunefx.passes.budget.measurement import round_to_of
from prunefx.passes.prune_to_budget import DEFAULT_ROUND_TO

ENTRY_RUNS = 10  # timed runs per table entry: the most a layer timer takes (runtime/tables/timer_by_name.py)

if TYPE_CHECKING:
    from prunefx.runtime.measure.pairs import Measurement


def latency_table(program: Program, backend: str = "ort", *, precision: str | None = None, batch: int = 1,
                  threads: int | None = None, multiple: int | None = None, cache_dir: str | None = None,
                  measurement: Measurement | None = None):
    """Every prunable 2-D convolution, linear layer and attention of `program` timed alone on `backend` at
    `precision` (None: the backend's), `batch` and `threads`, at a few widths in steps of `multiple` (None: the
    backend's width multiple, the one to prune to), cached on disk under `cache_dir` (None: the user cache), so a
    second call times nothing. `measurement` (a runtime.measure.pairs.Measurement) stands for backend, precision,
    batch and threads. Returns the table: a callable (layer, in_channels, out_channels) -> ms with `summary()`."""
    from prunefx.runtime import LATENCY_THREADS
    from prunefx.runtime.measure.pairs import Measurement
    from prunefx.runtime.tables.table import program_latency_table
    from prunefx.runtime.tables.timer_by_name import layer_timer

    require_program(program, "latency_table")
    for name, value in (("batch", batch), ("threads", threads)):  # a multiple: the table's own check
        _require_count(name, value)
    if measurement is None:
        measurement = Measurement.of(backend, threads=threads or LATENCY_THREADS, precision=precision, batch=batch,
                                     runs=ENTRY_RUNS)
    for example in program.example_inputs:  # each layer is timed on inputs of this batch: they must fit in memory
        check_input_shape((measurement.settings.batch, *example.shape[1:]), "latency table input")
    multiple = table_multiple(None, measurement.pair()) if multiple is None else multiple
    timer = layer_timer(measurement.backend, measurement.settings)
    # a Program on cuda:N is timed on cuda:N: the timers place layers on "cuda", the current GPU
    with current_gpu(module_device(program.module)):
        return program_latency_table(program, timer, multiple=multiple, batch=measurement.settings.batch,
                                     cache_dir=cache_dir)


def _require_count(name: str, value) -> None:
    """None (the default) or an integer >= 1: a 0 or a 1.5 is refused, not read as the default or rounded."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise PrunefxError(f"latency_table: {name} must be an integer >= 1, not {value!r}")


def table_multiple(round_to: int | None, measurer) -> int:
    """The width multiple a table is timed at: the one the removal keeps, as the width search resolves it (the
    round_to asked, else the measurer's backend's, else remove_channels' default)."""
    return int(round_to or round_to_of(measurer) or DEFAULT_ROUND_TO)
