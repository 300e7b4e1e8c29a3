"""Wall seconds per part of one long computation (the obs choice's Hessians, inverses and elimination; the
channel removal's scoring, choice, compensation and slicing), for report.json's `seconds`. A GPU runs its work
queued: each boundary waits for the device, or a part's time would land in the next part that reads a result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class PartSeconds:
    """`with parts.part("inverses"): ...` adds the block's seconds under its name, the work queued on `device`
    (a CUDA device; nothing to wait for on the CPU) finished at both ends; `seconds` gives them, rounded to the
    millisecond once read (a part met per layer adds many sub-millisecond times on a GPU)."""

    def __init__(self, device: torch.device | str | None = None, clock: Callable[[], float] = time.perf_counter):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.clock = clock
        self._totals: dict[str, float] = {}

    @property
    def seconds(self) -> dict[str, float]:
        return {name: round(total, 3) for name, total in self._totals.items()}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self._wait()
        start = self.clock()
        try:
            yield
        except BaseException:  # timed as it stands: a device that failed may fail again when waited for
            self.add(name, self.clock() - start)
            raise
        self._wait()
        self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + seconds

    def _wait(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
