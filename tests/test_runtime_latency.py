"""runtime: latency statistics, alternating comparisons, torch and ONNX Runtime runners."""

import math
import random
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunefx.graph import PrunefxError, capture
from prunefx.runtime import (
    LatencyStats,
    MeasurementError,
    TorchRunner,
    compare_latency,
    export_onnx,
    measure_latency,
    onnx_runner,
    torch_runner,
)
from prunefx.runtime.measure.latency import compare_rounds, pooled_rounds, timing_round


class FakeClock:
    """A clock that only moves when a scripted callable says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def callable_taking(self, durations_ms):
        """A callable whose calls take `durations_ms` in turn; its `calls` counts them."""
        durations = iter(durations_ms)

        def fn():
            fn.calls += 1
            self.now += next(durations) / 1e3
        fn.calls = 0
        return fn


def test_stats_equal_known_values_with_a_fake_clock():
    clock = FakeClock()
    timed = list(range(1, 101))  # 1..100 ms, in random order: order must not matter
    random.Random(0).shuffle(timed)
    warmup = [150.0] * 5  # slow warm-up calls (within WARM_SECONDS in all) must not be counted
    stats = measure_latency(clock.callable_taking(warmup + timed), warmup=5, runs=100, clock=clock)
    assert stats.runs == 100 and stats.threads is None
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)  # linear interpolation between order statistics
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.min_ms == pytest.approx(1.0)


@settings(deadline=None)  # a loaded 2-core machine once took 266 ms for one example
@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered(samples):
    stats = LatencyStats.from_seconds(samples)
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= max(samples) * 1e3 + 1e-9
    assert stats.min_ms <= stats.mean_ms <= max(samples) * 1e3 + 1e-9
    assert stats.runs == len(samples)


def test_to_dict_has_every_field():
    stats = LatencyStats.from_seconds([0.001, 0.002], threads=2)
    assert stats.to_dict() == {"median_ms": pytest.approx(1.5), "p90_ms": pytest.approx(1.9),
                               "p99_ms": pytest.approx(1.99), "mean_ms": pytest.approx(1.5),
                               "min_ms": pytest.approx(1.0), "runs": 2, "threads": 2}


def test_one_model_and_a_pair_warm_up_alike_stopping_after_warm_seconds_once_each_ran_twice():
    """`bench m` and `bench m --vs n` warm m alike: calls of 0.6 s stop after two, where a count would take 10."""
    for pair in (False, True):
        clock, calls = FakeClock(), []

        def slow(calls=calls, clock=clock):
            calls.append(clock.now)
            clock.now += 0.6

        if pair:
            compare_latency(slow, slow, warmup=10, runs=2, block=2, settle=0, clock=clock)
        else:
            measure_latency(slow, warmup=10, runs=2, clock=clock)
        assert len(calls) == (2 + 2) * (2 if pair else 1)  # two warm-up calls a side, then two timed


def test_compare_latency_alternates_call_by_call_in_warmup_then_in_blocks():
    order = []
    comparison = compare_latency(lambda: order.append("a"), lambda: order.append("b"), warmup=2, runs=5,
                                 block=2, settle=1)
    warmup = ["a", "b"] * 2
    # Each block: one settling call, then the timed calls; the last block holds what is left (1 run). The side that
    # goes first alternates from one pair of blocks to the next.
    blocks = ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 2 + ["b"] * 2
    assert order == warmup + blocks
    assert comparison.a.runs == comparison.b.runs == 5


def test_settling_calls_are_not_timed():
    clock = FakeClock()
    # Per block of 5: 2 slow settling calls (a thread pool still busy), then 5 timed ones.
    a = clock.callable_taking(([100.0] * 2 + [4.0] * 5) * 2)
    b = clock.callable_taking(([100.0] * 2 + [2.0] * 5) * 2)
    comparison = compare_latency(a, b, warmup=0, runs=10, block=5, settle=2, clock=clock)
    assert comparison.a.median_ms == pytest.approx(4.0) and comparison.a.p99_ms == pytest.approx(4.0)
    assert comparison.speedup == pytest.approx(2.0)


def test_bad_blocks_are_refused():
    with pytest.raises(MeasurementError, match="block >= 1"):
        compare_latency(lambda: None, lambda: None, block=0)
    with pytest.raises(MeasurementError, match="settle >= 0"):
        compare_latency(lambda: None, lambda: None, settle=-1)


def test_compare_latency_speedup_with_a_fake_clock():
    clock = FakeClock()
    slow, fast = clock.callable_taking([9.0] * 14), clock.callable_taking([3.0] * 14)
    comparison = compare_latency(slow, fast, warmup=2, runs=10, clock=clock)
    assert comparison.a.median_ms == pytest.approx(9.0)
    assert comparison.b.median_ms == pytest.approx(3.0)
    assert comparison.speedup == pytest.approx(3.0)
    assert set(comparison.to_dict()) == {"a", "b", "speedup", "speedup_low", "speedup_high", "confidence", "rounds",
                                            "processes", "contention"}
    # one block of 10 runs a side: no spread to judge, so no interval (not the point posing as one)
    assert comparison.speedup_low is None and comparison.speedup_high is None and comparison.confidence is None
    clock = FakeClock()
    slow, fast = clock.callable_taking([9.0] * 30), clock.callable_taking([3.0] * 30)
    comparison = compare_latency(slow, fast, warmup=2, runs=20, clock=clock)
    assert (comparison.speedup_low, comparison.speedup_high) == pytest.approx((3.0, 3.0))  # two blocks, no spread


def test_sleeping_callables_give_a_speedup_of_about_three():
    comparison = compare_latency(lambda: time.sleep(0.006), lambda: time.sleep(0.002), warmup=2, runs=15)
    assert comparison.b.median_ms >= 2.0 and comparison.a.median_ms >= 6.0  # sleep never returns early
    assert 1.5 < comparison.speedup < 4.0  # loose: sleeps overshoot on a loaded machine


def test_bad_counts_are_refused():
    with pytest.raises(MeasurementError, match="at least 1 timed run"):
        measure_latency(lambda: None, runs=0)
    with pytest.raises(PrunefxError, match="warm-up cannot be negative"):
        compare_latency(lambda: None, lambda: None, warmup=-1)


def test_pooled_rounds_is_the_pooled_ratio_with_students_t_over_the_rounds():
    """Checked against numpy and scipy directly: the speed-up is median(all of a) / median(all of b); the interval is
    t over the rounds' log-ratios around it; one round falls back to its pairs of blocks as units."""
    from scipy import stats

    rng = np.random.default_rng(3)
    rounds = [([list(rng.uniform(8e-3, 12e-3, 10)) for _ in range(3)],
               [list(rng.uniform(3e-3, 5e-3, 10)) for _ in range(3)], 2, 2) for _ in range(4)]

    def expected(units: list[tuple[np.ndarray, np.ndarray]], a: np.ndarray, b: np.ndarray, confidence=0.9):
        logs = [np.log(np.median(x) / np.median(y)) for x, y in units]
        half = stats.t.ppf((1 + confidence) / 2, len(logs) - 1) * np.std(logs, ddof=1) / np.sqrt(len(logs))
        centre = np.median(a) / np.median(b)
        return centre, centre * np.exp(-half), centre * np.exp(half)

    every_a = np.concatenate([np.concatenate(got_a) for got_a, *_ in rounds])
    every_b = np.concatenate([np.concatenate(got_b) for _, got_b, *_ in rounds])
    by_round = [(np.concatenate(got_a), np.concatenate(got_b)) for got_a, got_b, *_ in rounds]
    pooled = pooled_rounds(rounds)
    assert (pooled.speedup, pooled.speedup_low, pooled.speedup_high) == pytest.approx(
        expected(by_round, every_a, every_b), rel=1e-12)
    assert pooled.a.median_ms == pytest.approx(1e3 * np.median(every_a)) and pooled.b.runs == 120
    assert (pooled.confidence, pooled.rounds, pooled.a.threads) == (0.9, 4, 2)
    assert pooled_rounds(rounds, confidence=0.5).speedup_high < pooled.speedup_high
    got_a, got_b, *_ = rounds[0]
    one = pooled_rounds(rounds[:1])
    assert (one.speedup, one.speedup_low, one.speedup_high) == pytest.approx(expected(
        [(np.array(x), np.array(y)) for x, y in zip(got_a, got_b)], *by_round[0]), rel=1e-12)
    with pytest.raises(MeasurementError, match="at least one round"):
        pooled_rounds([])


def test_pooled_rounds_of_timing_rounds_is_what_compare_rounds_reports_of_the_same_timings():
    per_round = {"a": [[9.0, 8.0, 11.0, 10.0], [12.0, 9.5, 10.0, 9.0], [8.5, 10.5, 9.0, 13.0]],
                 "b": [[3.0, 3.5, 2.5, 4.0], [3.2, 2.9, 3.1, 5.0], [2.0, 3.0, 4.5, 3.5]]}

    def timed(run):
        clock = FakeClock()

        def maker(side):
            scripts = iter(per_round[side])
            return lambda: clock.callable_taking(next(scripts))
        return run(maker("a"), maker("b"), clock)

    whole = timed(lambda make_a, make_b, clock: compare_rounds(make_a, make_b, rounds=3, warmup=0, runs=12, block=2,
                                                               settle=0, clock=clock))
    by_hand = timed(lambda make_a, make_b, clock: pooled_rounds(
        [timing_round(make_a, make_b, 0, 4, 2, 0, clock, None) for _ in range(3)]))
    assert by_hand == whole and whole.rounds == 3 and whole.speedup_low < whole.speedup < whole.speedup_high


def test_progress_bar_is_optional(capsys):
    stats = measure_latency(lambda: None, warmup=0, runs=3, progress=True)
    assert stats.runs == 3
    assert "latency" in capsys.readouterr().err


def test_torch_runner_pins_and_restores_threads():
    seen = []

    def fake_program(*inputs):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled(), inputs))

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    runner = TorchRunner(fake_program, (torch.ones(1),), threads=target)
    stats = measure_latency(runner, warmup=1, runs=2)
    assert [(threads, inference) for threads, inference, _ in seen] == [(target, True)] * 3
    assert torch.get_num_threads() == before
    assert stats.threads == target
    assert measure_latency(runner, warmup=0, runs=1, threads=7).threads == 7  # explicit argument wins


def test_a_timing_loop_sets_torchs_threads_once_not_twice_a_call(monkeypatch):
    """Switching torch's thread count around every call would be timed with it; a pair at two counts still runs
    each side at its own."""
    seen, switches = [], []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda count: (switches.append(count), real_set(count)))
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2

    def program(side):
        return lambda *inputs: seen.append((side, torch.get_num_threads()))

    one, other = TorchRunner(program("a"), (), threads=target), TorchRunner(program("b"), (), threads=target)
    compare_latency(one, other, warmup=2, runs=20, block=5, settle=1)
    assert len(seen) == 2 * (2 + 20 + 4) and {threads for _, threads in seen} == {target}
    assert len(switches) <= 3  # once for the loop, and back after it
    assert torch.get_num_threads() == before
    seen.clear()
    compare_latency(one, TorchRunner(program("b"), (), threads=before), warmup=0, runs=4, block=2, settle=0)
    assert {side: threads for side, threads in seen} == {"a": target, "b": before}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -1, "2", True])
def test_torch_runner_refuses_a_thread_count_it_cannot_run_on(threads):
    # torch's own RuntimeError came only at the first timed call
    program = capture(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4))
    with pytest.raises(PrunefxError, match="threads must be an integer from 1"):
        torch_runner(program, threads=threads)


def test_torch_and_onnx_runners_compare_on_a_real_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))
    program = capture(model.eval(), torch.randn(1, 3, 32, 32), name="small")
    path = export_onnx(program, tmp_path / "small.onnx").path
    on_torch, on_onnx = torch_runner(program, threads=1), onnx_runner(path, program.example_inputs, threads=1)
    torch.testing.assert_close(torch.from_numpy(on_onnx()[0]), on_torch(), rtol=1e-4, atol=1e-5)
    comparison = compare_latency(on_torch, on_onnx, warmup=2, runs=5)
    assert comparison.a.threads == comparison.b.threads == 1
    assert comparison.a.median_ms > 0 and comparison.b.median_ms > 0
    assert comparison.speedup == pytest.approx(comparison.a.median_ms / comparison.b.median_ms)


def test_a_timing_loop_sets_up_each_session_run_once_not_per_call(tmp_path, monkeypatch):
    """An in-process timed call is the bare session.run a fresh process's round times: the interruptible
    RunOptions (about 5 us a call to set up) are made once per runner around the loop, and the runs still use them."""
    import prunefx.runtime.ort.interrupts as interrupts

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    program = capture(model.eval(), torch.randn(1, 3, 8, 8), name="tiny")
    path = export_onnx(program, tmp_path / "tiny.onnx").path
    made = []

    class CountedOptions(interrupts.ort.RunOptions):
        def __init__(self):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(interrupts.ort, "RunOptions", CountedOptions)
    a, b = (onnx_runner(path, program.example_inputs, threads=1) for _ in range(2))
    compare_latency(a, b, warmup=3, runs=20)
    measure_latency(a, warmup=3, runs=20)
    assert len(made) == 3  # two for the comparison, one for the measurement
    assert all(options.log_severity_level == interrupts.RUN_LOG_SEVERITY_FATAL for options in made)
    a()  # a call outside a timing loop sets up its own
    assert len(made) == 4


@pytest.mark.parametrize("spinning", [True, False])
def test_onnx_runner_sets_thread_spinning_as_asked(tmp_path, spinning):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    program = capture(model.eval(), torch.randn(1, 3, 8, 8), name="tiny")
    path = export_onnx(program, tmp_path / "tiny.onnx").path
    runner = onnx_runner(path, program.example_inputs, threads=2, spinning=spinning)
    options = runner.session.session.get_session_options()
    expected = "1" if spinning else "0"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == expected
    # Spinning stops when a run ends, so an idle session never steals cores from one timed beside it.
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert runner.session.spinning is spinning


def test_a_gpu_sample_of_a_short_call_holds_enough_back_to_back_calls_to_hide_its_launch():
    """gpu_latency.BackToBack (TensorRT engines, Torch-TensorRT modules): one call per sample would time the launch
    of a 20 us engine; a sample holds ceil(SAMPLE_MS / 0.02) calls on the engine's stream, chosen once."""
    from prunefx.runtime.measure.gpu_latency import SAMPLE_MS, BackToBack
    asked = []

    def timer(run, calls, stream):
        asked.append((calls, stream))
        for _ in range(calls):
            run()
        return 0.02

    ran = []
    sampler = BackToBack(stream="engine stream", timer=timer)
    assert [sampler(lambda: ran.append(1)) for _ in range(3)] == [0.02] * 3
    calls = math.ceil(SAMPLE_MS / 0.02)
    assert asked == [(1, "engine stream"), (1, "engine stream")] + [(calls, "engine stream")] * 3
    assert len(ran) == 2 + 3 * calls


def test_the_files_a_measurement_exports_stay_bounded_and_come_back_when_met_again():
    """A merge pass or a budget search meets a new candidate at every step: only the files used last stay on
    disk (the dense model's among them), and a Program met again after its file went is exported again."""
    from prunefx.runtime.measure.measured_files import ExportCache
    exported = []

    def export(program, path, batch, exporter, opset):
        path.write_bytes(program.name.encode())
        exported.append(program.name)
        return path, program.example_inputs

    cache = ExportCache(1, export=export, keep=3)
    dense = capture(torch.nn.Linear(4, 4).eval(), torch.randn(1, 4), name="dense")
    candidates = [capture(torch.nn.Linear(4, width).eval(), torch.randn(1, 4), name=f"w{width}") for width in (1, 2, 3, 5)]
    for candidate in candidates:
        for program in (dense, candidate):
            path, _, _ = cache.get(program)
            assert path.read_bytes() == program.name.encode()
    folder = path.parent
    assert len(list(folder.iterdir())) == 3 and exported == ["dense", "w1", "w2", "w3", "w5"]
    cache.get(candidates[0])  # its file went: exported again
    assert exported[-1] == "w1" and len(list(folder.iterdir())) == 3
    cache.close()  # every file goes at once, the folder too; a later get exports again
    assert not folder.exists()
    path, _, _ = cache.get(dense)
    assert exported[-1] == "dense" and path.read_bytes() == b"dense"


def test_a_budget_times_its_files_at_the_opset_the_model_is_delivered_at(monkeypatch):
    """--opset 20: the search's files and the confirmation's (the delivered ones) are written at opset 20, so the
    file timed is the file written."""
    import importlib

    from prunefx.runtime.measure.pairs import Measurement

    files = importlib.import_module("prunefx.runtime.measure.measured_files")
    asked, real = [], files.export_onnx
    monkeypatch.setattr(files, "export_onnx", lambda program, path, **options: (
        asked.append((options["exporter"], options["opset"])), real(program, path, **options))[1])
    dense = capture(torch.nn.Linear(16, 16).eval(), torch.randn(1, 16), name="dense")
    candidate = capture(torch.nn.Linear(16, 8).eval(), torch.randn(1, 16), name="candidate")
    pair = Measurement.of("ort", threads=1, runs=3, opset=20).pair()
    try:
        pair(dense, candidate)
        pair.confirm(dense, candidate)
    finally:
        pair.close()
    assert {exporter for exporter, _ in asked} == {"torchscript", "dynamo"} and {opset for _, opset in asked} == {20}


def test_a_large_model_is_read_and_confirmed_from_one_delivered_export_each(monkeypatch):
    """Above DELIVERED_FROM_BYTES of weights (lowered here to 60 KB), the search's reading times the dynamo files the
    confirmation times: each Program exported once, by dynamo; a model below it is read from a TorchScript file.
    Oracle: the exports counted where the cache calls them."""
    import importlib

    from prunefx.runtime.measure.pairs import Measurement

    files = importlib.import_module("prunefx.runtime.measure.measured_files")
    asked, real = [], files.export_onnx
    monkeypatch.setattr(files, "export_onnx", lambda program, path, **options: (
        asked.append((program.name, options["exporter"])), real(program, path, **options))[1])
    monkeypatch.setattr(files, "DELIVERED_FROM_BYTES", 60 << 10)
    dense = capture(torch.nn.Linear(128, 128).eval(), torch.randn(1, 128), name="dense")  # 66 KB
    candidate = capture(torch.nn.Linear(128, 127).eval(), torch.randn(1, 128), name="candidate")  # 65.5 KB
    small = capture(torch.nn.Linear(128, 8).eval(), torch.randn(1, 128), name="small")
    pair = Measurement.of("ort", threads=1, runs=3).pair()
    try:
        pair(dense, candidate)
        pair.confirm(dense, candidate)
        pair(dense, small)
    finally:
        pair.close()
    assert sorted(asked) == [("candidate", "dynamo"), ("dense", "dynamo"), ("small", "torchscript")]


def test_a_round_of_long_calls_cuts_its_blocks_so_that_four_passes_fit_its_seconds():
    """Warmed calls of a and b, blocks of 10 after 2 settling calls, 60 runs asked. Calls of 200 and 100 ms in 15 s:
    a pass may take 3.75 s, 12 calls a side, so the blocks stay as they are; in 6 s, 1.5 s or 5 calls a side: blocks
    of 5 with no settling call; in 3 s, blocks of 2. Calls of 2 s and 1 s in 15 s: single calls, a and b by turns
    (1 fits a pass of 3.75 s), and so in 1 s, where none fits. Short calls and a round without `seconds` keep their
    blocks. Oracle: the calls made and the clock, counted from the scripted durations."""
    from prunefx.runtime.measure.timing_loop import MIN_PASSES, alternate

    assert MIN_PASSES == 4  # the sizes below are worked out for it
    for durations, seconds, size, settle in (((200.0, 100.0), 15.0, 10, 2), ((200.0, 100.0), 6.0, 5, 0),
                                             ((200.0, 100.0), 3.0, 2, 0), ((2000.0, 1000.0), 15.0, 1, 0),
                                             ((2000.0, 1000.0), 1.0, 1, 0), ((20.0, 10.0), 15.0, 10, 2),
                                             ((2000.0, 1000.0), None, 10, 2)):
        clock = FakeClock()
        a, b = (clock.callable_taking([ms] * 200) for ms in durations)
        blocks_a, blocks_b = alternate(a, b, 2, 60, 10, 2, clock, seconds=seconds)
        made = [a.calls, b.calls]
        assert {len(block) for block in blocks_a + blocks_b} == {size}, (durations, seconds)
        passes = len(blocks_a)
        assert made == [2 + passes * (size + settle)] * 2, (durations, seconds)  # 2 warm-up calls a side
        assert clock.now == pytest.approx(made[0] * durations[0] / 1e3 + made[1] * durations[1] / 1e3)


def test_a_round_with_seconds_times_whole_passes_until_they_have_passed():
    """Calls of 2 s and 1 s, blocks of 2, 10 runs asked: a pass takes 6 s, so 13 s hold two passes and 11 s one (a
    second would end at 12 s); without `seconds` every run is timed; a first pass is timed whatever `seconds` says."""
    from prunefx.runtime.measure.timing_loop import alternate

    for seconds, passes in ((13.0, 2), (11.0, 1), (None, 5), (0.0, 1)):
        clock = FakeClock()
        a, b = clock.callable_taking([2000.0] * 100), clock.callable_taking([1000.0] * 100)
        blocks_a, blocks_b = alternate(a, b, 0, 10, 2, 0, clock, seconds=seconds)
        assert len(blocks_a) == len(blocks_b) == passes and all(len(block) == 2 for block in blocks_a)
