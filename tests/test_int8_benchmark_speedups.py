"""benchmarks/int8_latency.py and int8_after_pruning.py time many files interleaved in blocks; each speed-up they
report is the runtime's statistic for two models (the ratio of medians, Student's t over the pairs of blocks of
one pass), checked here against numpy and scipy on scripted blocks."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    if str(BENCHMARKS) not in sys.path:  # the benchmarks import their siblings
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _blocks(variants, rng) -> dict[str, list[list[float]]]:
    """Four passes of blocks of 5 runs (seconds), every variant at its own speed, a slow pass for all."""
    return {variant: [list(seconds * slow * rng.uniform(0.9, 1.1, 5)) for slow in (1.0, 1.3, 1.0, 1.1)]
            for variant, seconds in variants.items()}


def _expected(reference: list[list[float]], timed: list[list[float]]) -> tuple[float, float, float]:
    logs = [np.log(np.median(a) / np.median(b)) for a, b in zip(reference, timed)]
    half = stats.t.ppf(0.95, len(logs) - 1) * np.std(logs, ddof=1) / np.sqrt(len(logs))
    centre = np.median(np.concatenate(reference)) / np.median(np.concatenate(timed))
    return centre, centre * np.exp(-half), centre * np.exp(half)


def test_int8_latency_states_each_speedup_over_fp32_with_its_interval_over_the_pairs_of_blocks():
    benchmark = _benchmark("int8_latency")
    blocks = _blocks({"fp32": 0.010, "int8": 0.006, "pruned fp32": 0.007}, np.random.default_rng(0))
    rows = benchmark._with_speedups(blocks, {"modelopt": "failed: no modelopt"}, 2)
    assert rows["modelopt"] == {"error": "failed: no modelopt"}
    for variant in ("int8", "pruned fp32"):
        row = rows[variant]
        assert (row["speedup_vs_fp32"], row["speedup_vs_fp32_low"], row["speedup_vs_fp32_high"]) == pytest.approx(
            _expected(blocks["fp32"], blocks[variant]), rel=1e-12)
        assert row["median_ms"] == pytest.approx(1e3 * np.median(np.concatenate(blocks[variant])), rel=1e-12)
        assert (row["runs"], row["threads"], row["confidence"]) == (20, 2, 0.9)
    assert rows["fp32"]["speedup_vs_fp32"] == 1.0


def test_int8_after_pruning_states_speedups_and_int8_gains_with_their_intervals(monkeypatch):
    benchmark = _benchmark("int8_after_pruning")
    seconds = {"dense fp32": 0.010, "1/1 fp32": 0.0101, "1/1 prunefx int8": 0.007, "1/1 ort u8": 0.008,
               "8/0.5 fp32": 0.006, "8/0.5 prunefx int8": 0.004, "8/0.5 ort u8": 0.0045}
    blocks = _blocks(seconds, np.random.default_rng(1))
    dense = SimpleNamespace(example_inputs=[torch.zeros(1, 1, 28, 28)])
    monkeypatch.setattr(benchmark, "dense_model", lambda name, data, args: dense)
    monkeypatch.setattr(benchmark, "model_files", lambda *arguments: ({}, {"1/1": 1.0, "8/0.5": 0.5}))
    monkeypatch.setattr(benchmark, "_sessions", lambda files, threads: ({}, {}))
    monkeypatch.setattr(benchmark, "interleaved_blocks", lambda sessions, example, args: blocks)
    args = argparse.Namespace(round_to=[8], fractions=[0.5], batch=1, threads=1)
    result = benchmark.run_model("resnet20", SimpleNamespace(train=[(torch.zeros(2, 1, 28, 28), None)]), args)
    assert result["dense_ms"] == pytest.approx(1e3 * np.median(np.concatenate(blocks["dense fp32"])), rel=1e-12)
    row = result["fractions"]["8/0.5"]
    for kind in benchmark.KINDS:
        assert (row["speedup"][kind], row["speedup_low"][kind], row["speedup_high"][kind]) == pytest.approx(
            _expected(blocks["dense fp32"], blocks[f"8/0.5 {kind}"]), rel=1e-12)
        assert row["ms"][kind] == pytest.approx(1e3 * np.median(np.concatenate(blocks[f"8/0.5 {kind}"])), rel=1e-12)
    for kind in benchmark.KINDS[1:]:
        assert (row["int8_gain"][kind], row["int8_gain_low"][kind], row["int8_gain_high"][kind]) == pytest.approx(
            _expected(blocks["8/0.5 fp32"], blocks[f"8/0.5 {kind}"]), rel=1e-12)
    assert row["confidence"] == 0.9 and row["macs_kept"] == 0.5
    monkeypatch.setattr(benchmark, "machine_summary", lambda machine: "a machine")
    assert "| 0.500 |" in benchmark.markdown({"settings": {"batch": 1, "threads": 1, "runs": 20, "block": 5},
                                                     "machine": {}, "command": "x", "models": {"resnet20": result}})


def test_int8_head_to_head_states_the_pooled_ratio_with_a_95_percent_interval_over_the_rounds(monkeypatch):
    benchmark = _benchmark("int8_head_to_head")
    rng = np.random.default_rng(2)
    # each round: blocks of quantize_static's file (a) and of prunefx's (b), a slow round for both
    scripted = [([list(0.0102 * slow * rng.uniform(0.95, 1.05, 5)) for _ in range(3)],
                 [list(0.0100 * slow * rng.uniform(0.95, 1.05, 5)) for _ in range(3)], 1, 1)
                for slow in (1.0, 1.2, 1.0, 1.05, 0.98)]
    rounds = iter(scripted)
    monkeypatch.setattr(benchmark, "onnx_runner", lambda path, inputs, threads: path)
    monkeypatch.setattr(benchmark, "timing_round", lambda *settings: next(rounds))
    args = argparse.Namespace(rounds=len(scripted), runs=15)
    row = benchmark.head_to_head({"prunefx int8": "ours", "ort u8": "theirs"}, (), 1, args)
    a = [np.concatenate(theirs) for theirs, _, _, _ in scripted]
    b = [np.concatenate(ours) for _, ours, _, _ in scripted]
    logs = np.log([np.median(x) / np.median(y) for x, y in zip(a, b)])
    half = stats.t.ppf(0.975, len(logs) - 1) * np.std(logs, ddof=1) / np.sqrt(len(logs))
    centre = np.median(np.concatenate(a)) / np.median(np.concatenate(b))
    assert row["ratio"] == pytest.approx(centre, rel=1e-12) and row["confidence"] == 0.95
    assert row["interval_95"] == pytest.approx([centre * np.exp(-half), centre * np.exp(half)], rel=1e-12)
    assert row["ratios"] == pytest.approx(list(np.exp(logs)), rel=1e-12)
    assert row["rounds_prunefx_faster"] == int((logs > 0).sum()) and row["rounds"] == 5


def test_the_int8_benchmarks_time_each_file_in_a_session_set_as_prunefx_bench_sets_its_own(tmp_path, monkeypatch):
    """Subnormal floats flushed to zero (a random-weight fp32 model otherwise times its denormal arithmetic,
    which inflates INT8's gain), every variant's blocks from its own session."""
    from prunefx.graph import capture
    from prunefx.runtime import OnnxRuntimeSession, export_onnx

    monkeypatch.delenv("PRUNEFX_KEEP_DENORMALS", raising=False)
    benchmark = _benchmark("int8_latency")
    made, original = [], benchmark.onnx_runner
    monkeypatch.setattr(benchmark, "onnx_runner", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    program = capture(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)).eval()
    sessions = {name: OnnxRuntimeSession(export_onnx(program, tmp_path / f"{name}.onnx").path, threads=1)
                for name in ("fp32", "int8")}
    assert not any(session.flush_denormals for session in sessions.values())  # the plain session keeps them
    blocks = benchmark.interleaved_blocks(sessions, torch.randn(1, 3, 8, 8),
                                          argparse.Namespace(warmup=1, runs=4, block=2))
    assert [runner.session.flush_denormals for runner in made] == [True, True]
    assert {name: [len(block) for block in timed] for name, timed in blocks.items()} == {"fp32": [2, 2], "int8": [2, 2]}


def test_the_int8_benchmarks_time_their_variants_in_the_runtimes_loop_first_side_turning(monkeypatch):
    """Three variants: warm-up in turn, then per pass a settling call and a block of each, the order reversed on odd
    passes (a fixed order favoured whichever variant followed the same neighbour every time)."""
    import contextlib

    benchmark = _benchmark("int8_latency")
    order = []

    class Recording:
        def __init__(self, name):
            self.name = name

        @contextlib.contextmanager
        def timed_calls(self):
            yield lambda: order.append(self.name)

    monkeypatch.setattr(benchmark, "onnx_runner", lambda path, inputs, threads: Recording(path))
    sessions = {name: argparse.Namespace(path=name, threads=1) for name in ("a", "b", "c")}
    blocks = benchmark.interleaved_blocks(sessions, None, argparse.Namespace(warmup=1, runs=4, block=2))
    settle = benchmark.SETTLE
    passes = [name * (settle + 2) for name in "abc"] + [name * (settle + 2) for name in "cba"]
    assert "".join(order) == "abc" + "".join(passes)
    assert {name: [len(block) for block in timed] for name, timed in blocks.items()} == {n: [2, 2] for n in "abc"}
