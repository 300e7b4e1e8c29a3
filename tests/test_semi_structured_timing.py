"""2:4 timing (runtime/cuda/semi_structured.time_callables) samples as every GPU timing does: back-to-back calls
between one pair of events per sample, dense and sparse alternately, checked against a stand-in device whose
timer answers a known time per callable."""

from __future__ import annotations

import importlib

import pytest

semi_structured = importlib.import_module("prunefx.runtime.cuda.semi_structured")


class StandInDevice:
    warm_seconds = 0.0
    calls: list[int] = []

    def time(self, run, calls=1) -> float:
        StandInDevice.calls.append(calls)
        return run()


def test_dense_and_sparse_are_sampled_alternately_many_calls_a_sample(monkeypatch):
    monkeypatch.setattr(semi_structured, "require_sparse_gpu", lambda: None)
    monkeypatch.setattr(semi_structured, "CudaDevice", StandInDevice)
    order = []

    def dense():
        order.append("dense")
        return 2.0

    def sparse():
        order.append("sparse")
        return 0.5

    dense_stats, sparse_stats = semi_structured.time_callables(dense, sparse, warmup=2, runs=5, calls_per_run=7)
    assert dense_stats.median_ms == pytest.approx(2.0) and sparse_stats.median_ms == pytest.approx(0.5)
    timed = [["dense", "sparse"], ["sparse", "dense"]] * 2 + [["dense", "sparse"]]  # neither always first
    assert order == ["dense", "sparse"] * 2 + sum(timed, []) and set(StandInDevice.calls) == {7}


def test_by_default_a_sample_holds_as_many_calls_as_last_a_millisecond(monkeypatch):
    """A 10 us linear timed one call per sample would read its launch: 100 calls a sample; a 2 ms one, one."""
    monkeypatch.setattr(semi_structured, "require_sparse_gpu", lambda: None)
    monkeypatch.setattr(semi_structured, "CudaDevice", StandInDevice)
    StandInDevice.calls = []
    dense_stats, sparse_stats = semi_structured.time_callables(lambda: 2.0, lambda: 0.01, warmup=1, runs=3)
    assert sparse_stats.median_ms == pytest.approx(0.01) and dense_stats.median_ms == pytest.approx(2.0)
    # each: one untimed call and one to size the sample, then its samples
    assert StandInDevice.calls[:4] == [1, 1, 1, 1]
    assert set(StandInDevice.calls[4:]) == {1, 100}
