"""A per-layer latency table: each timed layer of a Program (2-D convolutions, linear layers, attention, layer
norms; see graph/channels/timed_layers.py) timed on a backend at the widths pruning can give it, cached on disk per
device, and handed to channel selection as remove_channels' `latency_table` (its `layer_time` target).

Layers are timed without their neighbours (no traffic between them or fusions: a table only chooses channels, a
whole-model measurement confirms), one at a time or a sweep's entries together (a timer's `time_all`), on a grid
of the backend's multiples, interpolated bilinearly between grid points.
The grid, the interpolation and the cache: see docs/algorithms.md, 'Latency tables'.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from prunefx.graph import Program
from prunefx.graph.channels.timed_layers import ATTENTION_KINDS, TimedLayer, timed_layers
from prunefx.graph.errors import PrunefxError
from prunefx.graph.progress import progress_bar
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.tables.times_cache import LatencyCache

log = logging.getLogger(__name__)


@runtime_checkable
class LayerTimer(Protocol):
    """Times one layer (at the widths it carries) on a backend, in ms; says what its times depend on. A timer may
    also have `sweeps`, how many times a table times each entry (build_latency_table; 1 where it has none)."""

    backend: str    # "ort", "torch", "cuda", ...
    device: str     # the device's identity: a CPU model string, a GPU's name
    precision: str  # "fp32", "fp16", ...
    settings: str   # anything else a time depends on: library version, threads

    def __call__(self, layer: TimedLayer) -> float: ...


def grid_widths(dense: int, multiple: int, max_ratio: float, points: int) -> tuple[int, ...]:
    """The widths an axis of `dense` channels is timed at (module docstring), ascending."""
    smallest = max(math.ceil((1.0 - max_ratio) * dense - 1e-9), 1)
    multiples = [w for w in range(multiple, dense, multiple) if w >= smallest]
    if len(multiples) > points - 1:  # evenly spread, the narrowest kept
        picks = {round(i * (len(multiples) - 1) / max(points - 2, 1)) for i in range(points - 1)}
        multiples = [multiples[i] for i in sorted(picks)]
    return (*multiples, dense)


@dataclass(frozen=True)
class LayerGrid:
    """One layer's times on its grid of widths: ms[i][j] at in_widths[i] and out_widths[j]."""

    in_widths: tuple[int, ...]
    out_widths: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    tied: bool = False  # a depthwise layer, a layer norm: its output width follows its input's, one row each
    geometry: str = ""  # the dense layer's as timed (TimedLayer.geometry): what a layer read from the grid must match

    def at(self, in_width: int, out_width: int) -> float:
        if self.tied:  # the removal keeps a tied layer's widths together: its input width says it all
            i0, i1, s, scale = _bracket(self.in_widths, in_width)
            return ((1 - s) * self.ms[i0][0] + s * self.ms[i1][0]) * scale
        (i0, i1, s, scale_in), (j0, j1, t, scale_out) = _bracket(self.in_widths, in_width), _bracket(
            self.out_widths, out_width)
        ms = self.ms
        value = ((1 - s) * ((1 - t) * ms[i0][j0] + t * ms[i0][j1])
                 + s * ((1 - t) * ms[i1][j0] + t * ms[i1][j1]))
        return value * scale_in * scale_out


def _bracket(widths: Sequence[int], width: int) -> tuple[int, int, float, float]:
    """(lower index, upper index, position between them, scale): outside the grid the nearest end, scaled
    by width / that end's width."""
    if width <= widths[0]:
        return 0, 0, 0.0, width / widths[0]
    if width >= widths[-1]:
        return len(widths) - 1, len(widths) - 1, 0.0, width / widths[-1]
    upper = bisect.bisect_right(widths, width)
    lower = upper - 1
    return lower, upper, (width - widths[lower]) / (widths[upper] - widths[lower]), 1.0


class LatencyTable:
    """The callable `(layer, in_channels, out_channels) -> ms` that channel selection reads, by layer name."""

    def __init__(self, grids: dict[str, LayerGrid], identity: dict[str, str], *, measured: int, cached: int,
                 seconds: float = 0.0, batch: int | None = None,
                 build: Callable[[Sequence[TimedLayer]], LatencyTable] | None = None):
        self.grids, self.identity, self.batch = grids, identity, batch
        self._matched: set[TimedLayer] = set()  # layers found to be those the grids were timed as
        self.measured, self.cached = measured, cached  # entries timed by this build, and read from the cache
        self.seconds = seconds  # what this build took: the table's cost to the user
        self._build = build  # the same timing of other layers (for_program)

    def for_program(self, program: Program) -> LatencyTable:
        """The table of another program's timed layers, timed as this one's were, the cache read first: a joint
        search prunes the network depth merged, whose merged convolutions this table does not hold. Its cost is
        counted in this table's summary."""
        if self._build is None:
            raise MeasurementError("this latency table cannot time another model's layers: build one for it")
        table = self._build(timed_layers(program.module))
        self.measured, self.cached, self.seconds = (self.measured + table.measured, self.cached + table.cached,
                                                    self.seconds + table.seconds)
        return table

    def __call__(self, layer: TimedLayer, in_channels: int, out_channels: int) -> float:
        grid = self.grids.get(layer.name)
        if grid is None:
            raise MeasurementError(f"the latency table has no layer '{layer.name}': it was built for another model")
        if layer not in self._matched:
            self._match(layer, grid)
        return grid.at(in_channels, out_channels)

    def _match(self, layer: TimedLayer, grid: LayerGrid) -> None:
        """Refuse a layer of the same name but another shape (another model, another input size): its times would
        be another layer's. Compared at the grid's dense widths, so a layer already narrowed still matches."""
        timed = layer.with_batch(self.batch) if self.batch is not None else layer
        geometry = timed.resized(grid.in_widths[-1], grid.out_widths[-1] if not grid.tied else
                                 grid.in_widths[-1] * layer.out_channels // layer.in_channels).geometry()
        if grid.geometry and geometry != grid.geometry:
            raise MeasurementError(f"the latency table timed layer '{layer.name}' as {grid.geometry}, this model's is "
                                   f"{geometry}: the table was built for another model or input size")
        self._matched.add(layer)

    def summary(self) -> dict:
        """What the table cost, for reports: its layers, the entries timed and read from the cache, seconds."""
        return {"layers": len(self.grids), "entries_timed": self.measured, "entries_cached": self.cached,
                "seconds": round(self.seconds, 2)}

    def to_dict(self) -> dict:
        return {"identity": self.identity, "measured": self.measured, "cached": self.cached,
                "layers": {name: {"in_widths": list(g.in_widths), "out_widths": list(g.out_widths),
                                  "ms": [list(row) for row in g.ms], "tied": g.tied}
                           for name, g in self.grids.items()}}


def build_latency_table(layers: Sequence[TimedLayer], timer: LayerTimer, *, multiple: int, max_ratio: float = 0.8,
                        points: int = 4, batch: int | None = None, cache_dir=None) -> LatencyTable:
    """Time every layer on its grid of widths with `timer`, reading and filling the cache for its identity. A
    timer with `sweeps` > 1 times every entry the cache lacks that many times, one sweep over the whole table after
    another, and keeps each entry's median: a stretch of a busy or throttled machine then spoils one sweep's
    readings, not an entry. A timer with `time_all` times a sweep's entries in one call (ONNX Runtime's: side by
    side in one model, runtime/tables/table_model.py)."""
    _check(multiple, max_ratio, points, batch)
    started = time.perf_counter()
    identity = {"backend": timer.backend, "device": timer.device, "precision": timer.precision,
                "settings": timer.settings}
    cache = LatencyCache(identity, cache_dir)
    planned = {layer.name: _planned(layer.with_batch(batch) if batch is not None else layer, multiple, max_ratio,
                                    points) for layer in layers}
    known, missing = _cached_and_missing(planned, cache)
    timed = _swept(timer, [layer.name for layer in layers], missing, getattr(timer, "sweeps", 1))
    for geometry, ms in timed.items():
        cache.put(geometry, ms)
    known.update(timed)
    entries = sum(len(row) for grid in planned.values() for row in grid.rows)
    measured, cached = len(timed), entries - len(timed)
    if measured:
        try:
            cache.save()
        except (OSError, PrunefxError) as error:  # only a cache: the table just timed is still good
            log.warning("latency table: could not save the cache %s (%s); the next table times its layers again",
                        cache.path, error)
    tables = {name: LayerGrid(grid.ins, grid.outs, tuple(tuple(known[entry.geometry()] for entry in row)
                                                         for row in grid.rows), grid.tied, grid.geometry)
              for name, grid in planned.items()}
    seconds = time.perf_counter() - started
    log.info("latency table: %d layers, %d entries timed, %d from %s, %.1f s", len(tables), measured, cached,
             cache.path, seconds)
    again = functools.partial(build_latency_table, timer=timer, multiple=multiple, max_ratio=max_ratio, points=points,
                              batch=batch, cache_dir=cache_dir)
    return LatencyTable(tables, identity, measured=measured, cached=cached, seconds=seconds, batch=batch, build=again)


def _cached_and_missing(planned: dict[str, _Planned], cache: LatencyCache) -> tuple[dict[str, float],
                                                                                     dict[str, list[TimedLayer]]]:
    """The entries' times the cache holds (by geometry), and the entries it lacks by the layer that needs each first
    (an entry of several layers, or of one layer's grid twice, is timed once)."""
    known: dict[str, float] = {}
    missing: dict[str, list[TimedLayer]] = {}
    needed: set[str] = set()
    for name, grid in planned.items():
        for entry in (entry for row in grid.rows for entry in row):
            geometry = entry.geometry()
            if geometry in known or geometry in needed:
                continue
            ms = cache.get(geometry)
            if ms is not None:
                known[geometry] = ms
            else:
                needed.add(geometry)
                missing.setdefault(name, []).append(entry)
    return known, missing


def _swept(timer: LayerTimer, names: list[str], missing: dict[str, list[TimedLayer]], sweeps: int) -> dict[str, float]:
    """The median of `sweeps` times of every entry in `missing` (by the layer that times it first), each sweep
    over every layer in the order `names`, by the timer's `time_all` where it has one (every entry of a sweep in
    one call); the progress bar counts layers, once a sweep."""
    samples: dict[str, list[float]] = {}
    together = getattr(timer, "time_all", None)
    with progress_bar("timing layers", sweeps * len(names), unit="layer", progress=None) as bar:
        for _ in range(sweeps):
            if callable(together):
                entries = [entry for name in names for entry in missing.get(name, ())]
                for entry, ms in zip(entries, together(entries), strict=True):
                    samples.setdefault(entry.geometry(), []).append(_checked(timer, entry, ms))
                bar.update(len(names))
                continue
            for name in names:
                for entry in missing.get(name, ()):
                    samples.setdefault(entry.geometry(), []).append(_checked(timer, entry, timer(entry)))
                bar.update()
    return {geometry: statistics.median(values) for geometry, values in samples.items()}


class _Planned(NamedTuple):
    """A layer's grid before it is timed: its input and output widths, whether tied, the layer at each pair of
    widths (rows by input width) and its dense geometry."""

    ins: tuple[int, ...]
    outs: tuple[int, ...]
    tied: bool
    rows: list[list[TimedLayer]]
    geometry: str


def _planned(dense: TimedLayer, multiple: int, max_ratio: float, points: int) -> _Planned:
    tied = dense.tied
    # a grouped convolution runs only at widths its groups divide; a depthwise one has one axis
    step = math.lcm(multiple, dense.groups) if dense.groups > 1 and not tied else multiple
    ins = grid_widths(dense.in_channels, 1 if dense.kind in ATTENTION_KINDS else step, max_ratio, points)  # heads
    outs = (dense.out_channels,) if tied else grid_widths(dense.out_channels, step, max_ratio, points)
    # a tied layer's channel multiplier stays as it was
    rows = [[dense.resized(in_width, in_width * dense.out_channels // dense.in_channels if tied else out_width)
             for out_width in outs] for in_width in ins]
    return _Planned(ins, outs, tied, rows, dense.geometry())


def program_latency_table(program: Program, timer: LayerTimer, **options) -> LatencyTable:
    """build_latency_table for every timed layer of `program` (options: multiple, max_ratio, points, batch,
    cache_dir)."""
    return build_latency_table(timed_layers(program.module), timer, **options)


def _checked(timer: LayerTimer, layer: TimedLayer, ms: float) -> float:
    ms = float(ms)
    if not math.isfinite(ms) or ms < 0:
        raise MeasurementError(f"the {timer.backend} layer timer gave {ms!r} ms for {layer.geometry()}")
    return ms


def _check(multiple: int, max_ratio: float, points: int, batch: int | None) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise MeasurementError(f"a latency table's width multiple must be an integer >= 1, not {multiple!r}")
    if not 0.0 <= max_ratio < 1.0:
        raise MeasurementError(f"a latency table's max_ratio must be in [0, 1), not {max_ratio!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise MeasurementError(f"a latency table needs at least 2 widths per axis, not {points!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise MeasurementError(f"a latency table's batch must be an integer >= 1, not {batch!r}")
