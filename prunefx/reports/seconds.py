"""Where a command's time went: wall seconds per stage, for report.json's `seconds` (compress and demo keep
theirs beside it). Timed by the process itself because a profiler cannot see every stage: on Python 3.12
cProfile's events miss the functions torch.export runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prunefx.graph.part_seconds import PartSeconds

WRITE_STAGE = "write (model.pt2, ONNX export, parity)"  # the last stage of every command that delivers a model


class StageSeconds(PartSeconds):
    """`with seconds.stage("load"): ...` adds the block's wall seconds under its name; `after_step`, given to
    Pipeline.run inside a stage, splits it by pass (each pass with its verification); `as_dict()` adds the
    total since construction. The parts of graph/part_seconds.py, on the host's clock alone."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        super().__init__(clock=clock)
        self.started = clock()
        self._mark: tuple[str, float] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._mark = (name, self.clock())
        try:
            with self.part(name):
                yield
        finally:
            self._mark = None

    def after_step(self, step: str, _result=None) -> None:
        """Pipeline.run's after_step: the seconds since the stage began or its last pass ended."""
        if self._mark is None:
            return
        name, since = self._mark
        now = self.clock()
        self.add(f"{name}: {step}", now - since)
        self._mark = (name, now)

    def add_parts(self, stage: str, parts: dict[str, float]) -> None:
        """Seconds a pass measured of its own parts (graph/part_seconds.py), under "STAGE: PART"."""
        for part, seconds in parts.items():
            self.add(f"{stage}: {part}", seconds)

    def as_dict(self) -> dict[str, float]:
        return {**self.seconds, "total": round(self.clock() - self.started, 3)}
