"""The speed-up interval a confirmation gives (runtime/measure/latency.py's Student's t over independent units), the
Measurer protocol
(passes/budget/measurement.py) and the width multiple each backend prefers (runtime/measure/width_multiple.py). The
oracles are worked out by hand here, not by the code under test: t's quantiles in closed form for 1 and 2 degrees
of freedom."""

import functools
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prunefx.passes.budget.measurement import LongerMeasurer, Measurer, Timing, as_measurer
from prunefx.passes.budget.search import Acceptance, Measured, meets, speedup_text
from prunefx.reports.budget_text import interval_text
from prunefx.runtime.backends import width_multiple as backend_multiple
from prunefx.runtime.errors import MeasurementError
from prunefx.runtime.measure.latency import compare_latency, compare_rounds
from prunefx.runtime.measure.ratio_interval import ratio_interval
from prunefx.runtime.measure.speedup import PairMeasurer, decided
from prunefx.runtime.measure.width_multiple import onnxruntime_multiple

AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl\n\nprocessor\t: 1\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


T_95_ONE = math.tan(math.pi * 0.45)  # Student's t at 95 %, 1 degree of freedom (a Cauchy quantile): 6.314
T_95_TWO = 0.9 / math.sqrt(2 * 0.95 * 0.05)  # at 95 %, 2 degrees of freedom: (2p - 1) / sqrt(2p(1 - p)), 2.920


def two_units(centre: float, first: float, second: float) -> tuple[float, float]:
    """The 90 % t interval around `centre` from two units' ratios: their log standard deviation is
    |log first - log second| / sqrt 2, its standard error that over sqrt 2 again."""
    half = T_95_ONE * abs(math.log(first / second)) / 2
    return centre * math.exp(-half), centre * math.exp(half)


def test_two_block_pairs_give_the_hand_computed_t_interval():
    """a is 6 ms throughout; b's first block runs at 2 ms, its second at 3 ms: the units' ratios are 3 and 2, the
    pooled one 6 / 2.5 = 2.4; two units leave one degree of freedom, so the interval is wide (0.67 to 8.6)."""
    low, high = ratio_interval([[6.0] * 10, [6.0] * 10], [[2.0] * 10, [3.0] * 10])
    assert (low, high) == pytest.approx(two_units(2.4, 3.0, 2.0))
    assert low < 1 < 8 < high


def test_identical_blocks_give_a_point_and_a_wider_spread_a_wider_interval():
    assert ratio_interval([[4.0] * 5] * 6, [[2.0] * 5] * 6) == pytest.approx((2.0, 2.0))
    rng = np.random.default_rng(1)
    narrow = ratio_interval([list(4 + 0.01 * rng.standard_normal(10)) for _ in range(12)],
                            [list(2 + 0.01 * rng.standard_normal(10)) for _ in range(12)])
    wide = ratio_interval([list(4 + 0.4 * rng.standard_normal(10)) for _ in range(12)],
                          [list(2 + 0.2 * rng.standard_normal(10)) for _ in range(12)])
    assert 1.99 < narrow[0] <= narrow[1] < 2.01
    assert wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])


def test_the_units_are_the_rounds_where_there_are_several():
    """Three rounds (fresh sessions) where b runs at 2, 2.5 and 3 ms, a at 6 ms, ten near-identical blocks each:
    three units of ratios 3, 2.4 and 2 around the pooled 2.4, two degrees of freedom. Blocks taken as the units
    instead (30 of them) give an interval about 2.4, much narrower, that says nothing of where the next round
    lands."""
    rng = np.random.default_rng(0)
    a = [list(6 + 0.001 * rng.standard_normal(10)) for _ in range(30)]
    b = [list(ms + 0.001 * rng.standard_normal(10)) for ms in (2.0, 2.5, 3.0) for _ in range(10)]
    low, high = ratio_interval(a, b, rounds=[r for r in range(3) for _ in range(10)])
    logs = [math.log(ratio) for ratio in (3.0, 2.4, 2.0)]
    mean = sum(logs) / 3
    half = T_95_TWO * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
    assert low == pytest.approx(2.4 * math.exp(-half), rel=1e-3) and high == pytest.approx(2.4 * math.exp(half), rel=1e-3)
    blocks_only = ratio_interval(a, b)
    assert 2.2 < blocks_only[0] <= blocks_only[1] < 2.6


def test_compare_rounds_makes_fresh_callables_each_round_and_shares_the_runs():
    made, calls = [], []

    def maker(label):
        def make():
            made.append(label)
            return lambda: calls.append(label)
        return make

    comparison = compare_rounds(maker("a"), maker("b"), rounds=3, warmup=1, runs=10, block=2, settle=0)
    assert made == ["a", "b"] * 3 and comparison.a.runs == comparison.b.runs == 10
    assert calls.count("a") == calls.count("b") == 10 + 3  # 4 + 3 + 3 timed runs, one warm-up per round
    assert comparison.rounds == 3 and comparison.method == "t over 3 session pairs"
    with pytest.raises(MeasurementError, match="rounds"):
        compare_rounds(maker("a"), maker("b"), rounds=11, runs=10)


def test_compare_rounds_stops_once_the_interval_settles_what_it_is_judged_against():
    """A stand-in clock makes a 2x speed-up exactly: judged against 1.5x, the interval clears it after the
    second round and the last two are never made; judged against 2x it never settles, and all four run."""
    made, now = [], [0.0]

    def maker(seconds):
        def make():
            made.append(seconds)
            return lambda: now.__setitem__(0, now[0] + seconds)
        return make

    clock = lambda: now[0]  # noqa: E731
    cleared = compare_rounds(maker(0.02), maker(0.01), rounds=4, warmup=0, runs=8, block=1, settle=0, clock=clock,
                             until=decided(1.5))
    assert len(made) == 4 and cleared.rounds == 2 and cleared.speedup_low >= 1.5
    made.clear()
    whole = compare_rounds(maker(0.02), maker(0.01), rounds=4, warmup=0, runs=8, block=1, settle=0, clock=clock,
                           until=lambda low, high: False)
    assert len(made) == 8 and whole.rounds == 4 and decided(None) is None
    # the two looks before the last round spend a fifth of the 10 % error rate, 1 % each; the last round 8 %
    assert cleared.confidence == pytest.approx(0.99) and whole.confidence == pytest.approx(0.92)


@pytest.mark.parametrize("rounds, runs, session_spread", [(4, 200, 0.05), (2, 100, 0.03), (1, 50, 0.0)])
def test_the_interval_covers_a_known_ratio_about_as_often_as_it_claims(rounds, runs, session_spread):
    """Simulated comparisons whose true ratio is 1.25: run-to-run noise of 10 %, and each round's sessions landing
    `session_spread` apart. The 90 % interval must hold the truth in 85 to 95 % of 400 of them (a percentile
    bootstrap over these few units held it in 77, 73 and 81 %)."""
    rng = np.random.default_rng(0)

    def side(median, share):
        offset = median * math.exp(session_spread * rng.standard_normal())
        times = offset * np.exp(0.10 * rng.standard_normal(share))
        return [list(times[i:i + 10]) for i in range(0, share, 10)]

    held = 0
    for _ in range(400):
        a, b, round_of = [], [], []
        for index in range(rounds):
            share = runs // rounds
            blocks_a, blocks_b = side(2.0, share), side(1.6, share)
            a, b, round_of = a + blocks_a, b + blocks_b, round_of + [index] * len(blocks_a)
        low, high = ratio_interval(a, b, rounds=round_of)
        held += low <= 1.25 <= high
    assert 0.85 <= held / 400 <= 0.95


def test_a_confirmation_asks_for_the_budget_it_is_judged_against_and_a_pair_passes_it_on():
    given = []

    def confirm(dense, candidate, against=None):
        given.append(against)
        return Timing(2.0, 1.0, 0.0, 1.9, 2.1)

    confirm.stops_early = True
    pair = PairMeasurer(lambda d, c: (2.0, 1.0, 0.0), confirm, round_to=None)
    measured = Measured.of((2.0, 1.0, 0.0))
    Acceptance(1.8, None, 0.15).confirm(measured, pair, "dense", "candidate")
    assert given == [1.8] and measured.confirmed
    assert not PairMeasurer(lambda d, c: (2.0, 1.0, 0.0), lambda d, c: Timing(2.0, 1.0, 0.0), None).stops_early


def test_a_short_last_block_is_used_and_unequal_sides_are_refused():
    # a full block (b at 2 ms) and a short one (one run at 3 ms), a at 6 ms: units of ratios 3 and 2, the pooled
    # median of b (2, 2, 2, 3) is 2, so the interval is around 3
    low, high = ratio_interval([[6.0] * 3, [6.0]], [[2.0] * 3, [3.0]])
    assert (low, high) == pytest.approx(two_units(3.0, 3.0, 2.0))
    with pytest.raises(MeasurementError, match="same number of blocks"):
        ratio_interval([[1.0]], [[1.0], [1.0]])


def test_a_zero_median_gives_no_interval_and_stops_no_comparison_early():
    # 0 / 0 is no ratio of 1: all zeros on both sides give no interval, as a zero on one side does
    assert ratio_interval([[0.0] * 5] * 4, [[0.0] * 5] * 4) == (None, None)
    assert ratio_interval([[2.0] * 5] * 4, [[0.0] * 5] * 4) == (None, None)
    now, looked = [0.0], []

    def maker(seconds):
        def make():
            def call():
                now[0] += seconds
            return call
        return make

    comparison = compare_rounds(maker(2e-3), maker(0.0), rounds=4, runs=40, warmup=2, block=5, clock=lambda: now[0],
                                until=lambda low, high: looked.append((low, high)) or True)
    assert looked == [] and comparison.rounds == 4 and comparison.speedup_low is None


def test_compare_latency_reports_the_interval_of_its_own_blocks():
    """A fake clock: the fast side takes 2 ms in its first block of 5 and 3 ms in its second, the slow side
    6 ms always; the interval is the two-unit one computed by hand above."""
    now = [0.0]
    fast_times = iter([2e-3] * 7 + [3e-3] * 7)  # 2 settling + 5 timed calls per block

    def clock():
        return now[0]

    def slow():
        now[0] += 6e-3

    def fast():
        now[0] += next(fast_times)

    comparison = compare_latency(slow, fast, warmup=0, runs=10, block=5, settle=2, clock=clock)
    assert (comparison.speedup_low, comparison.speedup_high) == pytest.approx(two_units(2.4, 3.0, 2.0))
    assert comparison.speedup == pytest.approx(6 / 2.5) and comparison.confidence == 0.9


def test_a_confirmed_candidate_meets_on_its_lower_bound_not_its_point():
    measured = Measured.of((2.1, 1.0, 0.02))  # 2.1x, unconfirmed: the point decides
    assert meets(measured, speedup=2.0, latency_ms=None)
    measured.confirm(lambda d, c: Timing(2.1, 1.0, 0.02, 1.95, 2.25, 0.9, "block bootstrap"), None, None)
    assert measured.speedup == pytest.approx(2.1) and not meets(measured, speedup=2.0, latency_ms=None)
    assert not meets(measured, speedup=None, latency_ms=1.05)  # 2.1 / 1.95 = 1.077 ms at the bound
    assert meets(measured, speedup=None, latency_ms=1.08)
    assert speedup_text(measured) == "2.10x (90 % interval 1.95-2.25)"
    # an early look's 99.67 % does not read "100 %", which no interval is
    late = Measured(Timing(2.1, 1.0, 0.01, 1.95, 2.25, 0.9967, "t over 8 fresh processes"), Timing(2.0, 1.0, 0.01))
    assert speedup_text(late) == "2.10x (99.7 % interval 1.95-2.25)"
    assert interval_text(late.to_dict()["interval"]) == " 99.7 % interval 1.95-2.25"
    row = measured.to_dict()
    assert row["interval"] == {"low": 1.95, "high": 2.25, "confidence": 0.9, "method": "block bootstrap"}
    assert Measured.from_dict(row) == measured  # the report hands it on unchanged


def test_a_plain_function_is_a_measurer_with_a_point_interval():
    calls = []

    def latency(dense, candidate):
        calls.append(candidate)
        return 3.0, 1.5, 0.01

    measurer = as_measurer(latency)
    assert isinstance(measurer, Measurer) and measurer.round_to is None
    timing = measurer.confirm("dense", "candidate")
    assert (timing.low, timing.high, timing.method) == (2.0, 2.0, "point") and len(calls) == 1
    assert tuple(timing) == (3.0, 1.5, 0.01)
    pair = PairMeasurer(latency, lambda d, c: Timing(3.0, 1.5, 0.0, 1.9, 2.1), round_to=16)
    assert isinstance(pair, Measurer) and as_measurer(pair) is pair
    assert pair.confirm("dense", "candidate").low == 1.9 and tuple(pair("d", "c")) == (3.0, 1.5, 0.01)
    # a plain function measures no longer than it confirms; a pair given a longer measurement uses it
    assert not isinstance(measurer, LongerMeasurer) and isinstance(pair, LongerMeasurer)
    assert pair.confirm_longer("dense", "candidate").low == 1.9  # none given: the confirmation itself
    longer = PairMeasurer(latency, lambda d, c: Timing(3.0, 1.5, 0.0, 1.9, 2.1), round_to=16,
                          longer=lambda d, c: Timing(3.0, 1.5, 0.0, 1.96, 2.04))
    assert (longer.confirm_longer("d", "c").low, longer.confirm("d", "c").low) == (1.96, 1.9)


def test_the_width_multiple_comes_from_the_backend():
    assert onnxruntime_multiple(AVX512) == 16 and onnxruntime_multiple(AVX2) == 8
    assert onnxruntime_multiple("") == 8  # flags unreadable: the narrower multiple, which fits both
    assert backend_multiple("ort", cpuinfo=AVX512) == 16
    assert backend_multiple("trt", "fp16") == 8 and backend_multiple("trtexec", "int8") == 32
    with pytest.raises(MeasurementError, match="no width multiple"):
        backend_multiple("tvm")


def test_bench_vs_and_the_search_lines_print_the_interval():
    from prunefx.cli.commands.bench import _table
    from prunefx.reports.budget_text import search_lines

    stats = {"median_ms": 2.0, "p90_ms": 2.2, "p99_ms": 2.5}
    report = {"model": "dense.onnx", "vs": "model.onnx", "a": stats, "b": stats, "speedup": 2.04,
              "speedup_low": 1.98, "speedup_high": 2.11, "confidence": 0.9, "backend": "ort", "threads": 2,
              "runs": 100, "spinning": True}
    assert "2.04x (measured alternately in one process; 90 % interval 1.98-2.11)" in _table(report)
    interval = {"low": 2.02, "high": 2.2, "confidence": 0.9, "method": "block bootstrap"}
    row = {"macs_kept": 0.45, "speedup": 2.1, "ms": 1.0, "dense_ms": 2.1, "spread": 0.03, "interval": interval,
           "first": {"speedup": 2.0}}
    lines = search_lines({"trace": [row], "budget": "a 2x speed-up", "speedup": 2.1, "ms": 1.0, "dense_ms": 2.1,
                          "interval": interval})
    assert "confirmed 90 % interval 2.02-2.20, first measured 2.00x" in lines[0]
    assert "(1.00 ms vs 2.10 ms dense, 90 % interval 2.02-2.20)" in lines[1]



class _Noop:
    threads = 1

    def __call__(self):
        return None


def _record_pid_and_make_runner(path: str) -> _Noop:
    """A picklable maker (module level): it runs in the round's process and notes that process's id."""
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    return _Noop()


def test_rounds_in_fresh_processes_each_run_in_a_process_of_their_own(tmp_path):
    log = tmp_path / "pids.txt"
    maker = functools.partial(_record_pid_and_make_runner, str(log))
    comparison = compare_rounds(maker, maker, rounds=2, warmup=1, runs=4, block=2, settle=0, processes=True)
    pids = [int(line) for line in log.read_text().split()]
    assert len(pids) == 4 and pids[0] == pids[1] and pids[2] == pids[3]  # both sessions of a round share it
    assert pids[0] != pids[2] and os.getpid() not in pids  # each round a process of its own, not this one
    assert comparison.a.runs == comparison.b.runs == 4 and comparison.a.threads == 1
    assert comparison.method == "t over 2 fresh processes"


def test_rounds_in_fresh_processes_do_not_rerun_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text("import functools, os\n"
                      "from prunefx.runtime.measure.latency import compare_rounds\n"
                      "print('the script ran')\n"
                      "maker = functools.partial(functools.partial, os.getpid)  # picklable: makes a callable\n"
                      "c = compare_rounds(maker, maker, rounds=2, warmup=1, runs=2, block=1, settle=0, processes=True)\n"
                      "print(c.method)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["the script ran", "t over 2 fresh processes"]


def _failing_maker():
    raise RuntimeError("the session could not be made")


def test_a_round_whose_process_fails_names_the_error_in_one_line():
    with pytest.raises(MeasurementError) as caught:
        compare_rounds(_failing_maker, _failing_maker, rounds=2, warmup=1, runs=2, block=1, settle=0, processes=True)
    message = str(caught.value)
    assert message == "a timing round's process failed: RuntimeError: the session could not be made"


def _relu_file(path) -> str:
    """A one-operator ONNX file written with onnx.helper, so that nothing of prunefx's export is involved."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return str(path)


def test_a_round_of_two_onnx_sessions_imports_neither_torch_nor_prunefx(tmp_path):
    """`python -X importtime` lists every module the round's process imports: the oracle is the interpreter's."""
    from prunefx.runtime.measure import latency
    from prunefx.runtime.measure.latency import _round_request
    from prunefx.runtime.ort.runners import OnnxRunnerMaker

    maker = OnnxRunnerMaker(_relu_file(tmp_path / "relu.onnx"), [np.ones((1, 8), np.float32)], threads=1)
    request, answer = tmp_path / "round.pickle", tmp_path / "blocks.pickle"
    request.write_bytes(pickle.dumps(_round_request((maker, maker, 1, 4, 2, 0, time.perf_counter, None))))
    script = str(Path(latency.__file__).with_name("rounds.py"))
    done = subprocess.run([sys.executable, "-X", "importtime", script, str(request), str(answer)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and "torch" not in imported and "prunefx" not in imported
    blocks_a, blocks_b, threads_a, threads_b = pickle.loads(answer.read_bytes())
    assert [len(block) for block in blocks_a] == [len(block) for block in blocks_b] == [2, 2]
    assert threads_a == threads_b == 1


def test_onnx_sessions_in_fresh_processes_give_a_comparison_and_name_a_wrong_input_in_one_line(tmp_path):
    from prunefx.runtime.ort.runners import OnnxRunnerMaker

    path = _relu_file(tmp_path / "relu.onnx")
    maker = OnnxRunnerMaker(path, [np.ones((1, 8), np.float32)], threads=2)
    comparison = compare_rounds(maker, maker, rounds=2, warmup=1, runs=6, block=3, settle=1, processes=True)
    assert comparison.a.runs == comparison.b.runs == 6 and comparison.a.threads == comparison.b.threads == 2
    assert comparison.method == "t over 2 fresh processes"
    two_inputs = OnnxRunnerMaker(path, [np.ones((1, 8), np.float32)] * 2)
    with pytest.raises(MeasurementError, match=r"^a timing round's process failed: ValueError: relu.onnx takes 1 "
                                               r"input\(s\), got 2$"):
        compare_rounds(two_inputs, two_inputs, rounds=1, warmup=0, runs=1, block=1, settle=0, processes=True)


def test_a_session_maker_checks_the_file_before_any_round_starts(tmp_path):
    from prunefx.runtime.errors import OnnxSessionError
    from prunefx.runtime.ort.runners import OnnxRunnerMaker

    with pytest.raises(OnnxSessionError, match="no such ONNX file"):
        missing = OnnxRunnerMaker(tmp_path / "gone.onnx", [np.ones((1, 8), np.float32)])
        compare_rounds(missing, missing, rounds=1, warmup=0, runs=1, block=1, settle=0, processes=True)


def test_a_round_in_a_fresh_process_stops_its_passes_after_its_seconds(tmp_path):
    """rounds.py honours `seconds` for plain sessions: 0 seconds, one pass of blocks cut to a single call (no call
    fits, timing_loop.fitted_blocks: 1 run a side of the 8 asked); none, every run."""
    from prunefx.runtime.ort.runners import OnnxRunnerMaker

    maker = OnnxRunnerMaker(_relu_file(tmp_path / "relu.onnx"), [np.ones((1, 8), np.float32)], threads=1)
    short = compare_rounds(maker, maker, rounds=2, warmup=1, runs=16, block=2, settle=0, processes=True, seconds=0)
    whole = compare_rounds(maker, maker, rounds=2, warmup=1, runs=16, block=2, settle=0, processes=True)
    assert (short.a.runs, short.b.runs) == (2, 2) and (whole.a.runs, whole.b.runs) == (16, 16)


def test_the_onnx_confirmation_caps_each_round_at_round_seconds(monkeypatch):
    """A confirmation (rounds > 1) asks compare_rounds for ROUND_SECONDS a round; a search reading (one round)
    times every run it asked for."""
    from prunefx.runtime.measure import speedup

    asked = {}

    def recording(make_a, make_b, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(speedup, "compare_rounds", recording)
    monkeypatch.setattr(speedup, "OnnxRunnerMaker", lambda path, inputs, **sessions: path)
    timed = speedup._onnx_runtime_pair(_Sources(), {"threads": 1, "spinning": True, "flush_denormals": None},
                                       runs=40, warmup=2, rounds=4)
    with pytest.raises(RuntimeError, match="recorded"):
        timed(object(), object())
    assert asked["seconds"] == speedup.ROUND_SECONDS and asked["runs"] == 40 and asked["rounds"] == 4


class _Sources:
    """ExportCache's interface, without exporting: an entry (path, inputs, key) per Program."""

    def get(self, program, key=None):
        return ("model.onnx", (np.ones((1, 8), np.float32),), str(id(program)))


def test_the_onnx_search_reading_caps_its_passes_at_round_seconds_too(monkeypatch):
    from prunefx.runtime.measure import speedup

    asked = {}

    def recording(fn_a, fn_b, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(speedup, "compare_latency", recording)
    monkeypatch.setattr(speedup, "OnnxRunnerMaker", lambda path, inputs, **sessions: lambda: path)
    timed = speedup._onnx_runtime_pair(_Sources(), {"threads": 1, "spinning": True, "flush_denormals": None},
                                       runs=30, warmup=2)
    with pytest.raises(RuntimeError, match="recorded"):
        timed(object(), object())
    assert asked["seconds"] == speedup.ROUND_SECONDS and asked["runs"] == 30


def test_a_search_pair_checks_each_file_once_however_often_it_measures_it(tmp_path, monkeypatch):
    """Two readings of one dense file, each beside another candidate: three files, three checks of their value
    sizes (a ViT-L's take a second or two), where each reading checked both its files twice (the maker, then the
    session it made). Oracle: the checks counted where session.py and runners.py call them."""
    from prunefx.runtime.measure import speedup
    from prunefx.runtime.ort import runners, session

    files = {name: _relu_file(tmp_path / f"{name}.onnx") for name in ("dense", "one", "two")}
    checked = []

    def counting(path, threads, *, real=session.check_session_file):
        checked.append(path.stem)
        real(path, threads)

    monkeypatch.setattr(session, "check_session_file", counting)
    monkeypatch.setattr(runners, "check_session_file", counting)

    class Files:
        def get(self, name, key=None):
            return files[name], (np.ones((1, 8), np.float32),), name

    timed = speedup._onnx_runtime_pair(Files(), {"threads": 1, "spinning": True, "flush_denormals": None},
                                       runs=4, warmup=1)
    for candidate in ("one", "two"):
        assert timed("dense", candidate).ms > 0
    assert sorted(checked) == ["dense", "one", "two"]
