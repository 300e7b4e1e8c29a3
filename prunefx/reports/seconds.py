"""Where a command's time went: wall seconds per stage, for report.json's `seconds` (compress and demo keep
theirs beside it). Timed by the process itself because a profiler cannot see every stage: on Python 3.12
cProfile's events miss the functions torch.export runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WRITE_STAGE = "write (model.pt2, ONNX export, parity)"  # the last stage of every command that delivers a model


class StageSeconds:
    """`with seconds.stage("load"): ...` adds the block's wall seconds under its name; `after_step`, given to
    Pipeline.run inside a stage, splits it by pass (each pass with its verification); `as_dict()` adds the
    total since construction."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock, self.started, self.seconds = clock, clock(), {}
        self._mark: tuple[str, float] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        self._mark = (name, start)
        try:
            yield
        finally:
            self._mark = None
            self._add(name, self.clock() - start)

    def after_step(self, step: str, _result=None) -> None:
        """Pipeline.run's after_step: the seconds since the stage began or its last pass ended."""
        if self._mark is None:
            return
        name, since = self._mark
        now = self.clock()
        self._add(f"{name}: {step}", now - since)
        self._mark = (name, now)

    def add_parts(self, stage: str, parts: dict[str, float]) -> None:
        """Seconds a pass measured of its own parts (graph/part_seconds.py), under "STAGE: PART"."""
        for part, seconds in parts.items():
            self._add(f"{stage}: {part}", seconds)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)

    def as_dict(self) -> dict[str, float]:
        return {**self.seconds, "total": round(self.clock() - self.started, 3)}
