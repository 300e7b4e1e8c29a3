"""Neither side of a comparison is always timed first. On a machine that slows steadily while it measures (a fake
clock whose calls lengthen with time), two identical callables must read as equally fast: timed a-then-b in every
pair, the later side b read slower by the drift of one block (one sample on the GPU)."""

from __future__ import annotations

import pytest

from prunefx.runtime.measure.gpu_latency import compare_gpu_latency
from prunefx.runtime.measure.latency import compare_latency, compare_rounds

DRIFT = 1e-3  # each call lengthens by this fraction per second of the clock


class _DriftingMachine:
    """A clock, and callables whose every call takes 1 ms stretched by how long the machine has run."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += 1e-3 * (1 + DRIFT * self.now * 1e3)


def test_the_cpu_loop_times_identical_callables_as_equal_on_a_drifting_machine():
    machine = _DriftingMachine()
    comparison = compare_latency(machine.work, machine.work, warmup=0, runs=200, block=10, settle=0,
                                 clock=machine.clock)
    assert comparison.speedup == pytest.approx(1.0, abs=2e-3)


def test_rounds_time_identical_callables_as_equal_on_a_drifting_machine():
    machine = _DriftingMachine()
    comparison = compare_rounds(lambda: machine.work, lambda: machine.work, rounds=4, runs=80, warmup=0, block=10,
                                settle=0, clock=machine.clock)
    assert comparison.speedup == pytest.approx(1.0, abs=2e-3)


def test_gpu_samples_alternate_which_side_goes_first():
    machine = _DriftingMachine()

    def timed() -> float:  # a runner that times itself, as an engine's time_once does
        before = machine.now
        machine.work()
        return (machine.now - before) * 1e3

    comparison = compare_gpu_latency(timed, timed, warmup=0, runs=200, clock=machine.clock)
    assert comparison.speedup == pytest.approx(1.0, abs=2e-4)  # b timed always second read 1e-3 slower
