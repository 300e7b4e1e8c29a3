"""benchmarks/tool_speed.py measures each case as its own process: the child's own wall time and peak memory,
a failing case as a row with its one-line error, a case past its timeout killed and reported. The fast tests
run small Python children (a stand-in for `prunefx` included) whose memory and time are known; the slow one
runs the real CLI and Torch-Pruning on the smallest model."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MB = 1e6


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("tool_speed")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_child_reports_its_own_wall_time_and_peak_memory():
    measured = _benchmark().run_measured(_python("""
        import time
        block = b"x" * 300_000_000  # every page written: resident
        time.sleep(0.3)
    """), timeout=60)
    assert measured.status == "ok" and measured.error is None
    assert measured.wall_s >= 0.3
    # Its own 300 MB and an interpreter, not this test process's memory (torch alone is larger).
    assert 300 <= measured.peak_rss_mb < 300 + 150


def test_a_failing_case_keeps_its_last_error_line():
    measured = _benchmark().run_measured(_python("""
        import sys
        print("a warning first", file=sys.stderr)
        sys.exit("prunefx prune: error: the model takes 1x1x28x28")
    """), timeout=60)
    assert measured.status == "failed"
    assert measured.error == "prunefx prune: error: the model takes 1x1x28x28"
    assert measured.wall_s > 0 and measured.peak_rss_mb > 0


def test_a_command_that_cannot_start_is_a_failed_row():
    measured = _benchmark().run_measured(["/no/such/prunefx", "prune"], timeout=60)
    assert measured.status == "failed" and "/no/such/prunefx" in measured.error


def test_a_case_past_its_timeout_is_killed_and_reported():
    measured = _benchmark().run_measured(_python("import time; time.sleep(60)"), timeout=0.5)
    assert measured.status == "timed out" and measured.error == "timed out after 0.5 s"
    assert 0.5 <= measured.wall_s < 30


# A stand-in for the `prunefx` entry point: holds 40 MB, writes a report.json for a MACs target and fails
# with a one-line error when given calibration data.
FAKE_PRUNEFX = """
import json, pathlib, sys
block = b"x" * 40_000_000
args = sys.argv[1:]
if "--calibrate" in args:
    sys.exit("prunefx prune: error: no calibration here")
out = pathlib.Path(args[args.index("-o") + 1])
out.mkdir(parents=True)
report = {"params_before": 2_500_000, "macs_before": 1000, "macs_after": 480, "parity": {"relative": 1e-6}}
(out / "report.json").write_text(json.dumps(report))
"""


def test_every_case_is_a_row_ok_or_failed_with_the_model_memory(tmp_path, monkeypatch):
    benchmark = _benchmark()
    fake = tmp_path / "prunefx_fake.py"
    fake.write_text(FAKE_PRUNEFX)
    monkeypatch.setattr(benchmark, "prunefx_command", lambda: [sys.executable, str(fake)])
    assert benchmark.main(["--models", "fake:net", "--cases", "uncalibrated", "calibrated", "--threads", "1",
                           "--repeat", "1", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "tool_speed.json").read_text())
    assert report["settings"]["omp_threads"] == 1
    done, failed = report["rows"]
    assert (done["case"], done["status"], failed["case"], failed["status"]) == ("uncalibrated", "ok",
                                                                                  "calibrated", "failed")
    assert done["command"].endswith("prune fake:net --macs 0.5 -o DIR")
    assert done["macs_kept"] == pytest.approx(0.48) and done["parity_relative"] == pytest.approx(1e-6)
    assert failed["error"] == "prunefx prune: error: no calibration here"
    for row in report["rows"]:  # the model's memory, from the case that counted its parameters: 10 MB
        assert row["model_mb"] == pytest.approx(10.0)
        assert row["peak_rss_mb"] >= 40 and row["peak_per_model"] == pytest.approx(row["peak_rss_mb"] / 10.0)
    text = (tmp_path / "tool_speed.md").read_text()
    assert report["command"] in text and "**failed**: prunefx prune: error: no calibration here" in text


def test_repeated_cases_report_the_median_wall_time_and_stop_at_a_failure(tmp_path, monkeypatch):
    benchmark = _benchmark()
    fake = tmp_path / "prunefx_fake.py"
    fake.write_text(FAKE_PRUNEFX)
    monkeypatch.setattr(benchmark, "prunefx_command", lambda: [sys.executable, str(fake)])
    walls = iter([3.0, 1.0, 2.0])
    real_run = benchmark.run_measured

    def run_with_set_walls(command, **kwargs):
        measured = real_run(command, **kwargs)
        measured.wall_s = next(walls) if measured.status == "ok" else measured.wall_s
        return measured

    monkeypatch.setattr(benchmark, "run_measured", run_with_set_walls)
    assert benchmark.main(["--pair", "fake:net", "uncalibrated", "--pair", "fake:net", "calibrated",
                           "--threads", "1", "--repeat", "3", "--output-dir", str(tmp_path)]) == 0
    done, failed = json.loads((tmp_path / "tool_speed.json").read_text())["rows"]
    assert done["wall_runs_s"] == [3.0, 1.0, 2.0] and done["wall_s"] == 2.0
    assert failed["status"] == "failed" and len(failed["wall_runs_s"]) == 1  # not retried
    text = (tmp_path / "tool_speed.md").read_text()
    assert "median of 3 runs (1.0-3.0 s)" in text and "Each case ran 3 times, round by round" in text


def test_the_cases_run_round_by_round(tmp_path, monkeypatch):
    """Every case once per round, not one case's runs back to back: a slower hour hits every case alike."""
    benchmark = _benchmark()
    fake = tmp_path / "prunefx_fake.py"
    fake.write_text(FAKE_PRUNEFX)
    monkeypatch.setattr(benchmark, "prunefx_command", lambda: [sys.executable, str(fake)])
    order = []
    real_run = benchmark.run_measured

    def run_in_order(command, **kwargs):
        order.append(command[command.index("prune") + 1])
        return real_run(command, **kwargs)

    monkeypatch.setattr(benchmark, "run_measured", run_in_order)
    assert benchmark.main(["--models", "fake:a", "fake:b", "--cases", "uncalibrated", "--threads", "1",
                           "--repeat", "2", "--output-dir", str(tmp_path)]) == 0
    assert order == ["fake:a", "fake:b", "fake:a", "fake:b"]


def test_the_billion_parameter_model_runs_only_its_uncalibrated_case():
    benchmark = _benchmark()
    pairs = benchmark.default_pairs(list(benchmark.MODELS), list(benchmark.CASES))
    assert [case for model, case in pairs if model == "vit_g14"] == ["uncalibrated"]
    assert [case for model, case in pairs if model == "resnet50"] == list(benchmark.CASES)


@pytest.mark.slow
def test_the_real_cli_and_torch_pruning_on_the_smallest_model(tmp_path):
    benchmark = _benchmark()
    assert benchmark.main(["--models", "prunefx:resnet20", "--cases", "uncalibrated", "torch-pruning",
                           "--threads", "1", "--repeat", "1", "--output-dir", str(tmp_path)]) == 0
    prunefx_row, tp_row = json.loads((tmp_path / "tool_speed.json").read_text())["rows"]
    for row in (prunefx_row, tp_row):
        assert row["status"] == "ok", row["error"]
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 100  # an interpreter with torch
        assert row["macs_kept"] == pytest.approx(0.5, abs=0.03)
    assert tp_row["params"] == prunefx_row["params"] == 272186  # the same model, counted by both tools
    assert tp_row["torch_pruning"]["torch_threads"] == 1


def test_a_budget_case_keeps_each_candidate_s_reading_and_confirmation(tmp_path):
    """A `--speedup` case's length is its candidates: the row keeps each one's reading and, where it had one, its
    confirmation, and the table's note lists them, so a slow search says why it was slow."""
    benchmark = _benchmark()
    unconfirmed = {"macs_kept": 0.47, "speedup": 2.04, "confirmed": False}
    confirmed = {"macs_kept": 0.42, "speedup": 2.20, "confirmed": True, "longer": True,
                 "interval": {"low": 2.08, "high": 2.33}, "first": {"speedup": 2.31}}
    report = {"params_before": 10, "macs_before": 100, "macs_after": 42, "seconds": {},
              "budget": {"speedup": 2.20, "trace": [unconfirmed, confirmed]}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    details = benchmark.case_details("speedup", benchmark.Measured("ok", 1.0, 1.0, None, ""), tmp_path)
    assert details["candidates"] == 2
    assert details["search"] == [{"macs_kept": 0.47, "reading": 2.04},
                                 {"macs_kept": 0.42, "reading": 2.31, "confirmed": 2.20, "low": 2.08, "longer": True}]
    note = benchmark._what_it_did({"case": "speedup", **details})
    assert note == "measured 2.20x after 2 candidates (read 2.04x; read 2.31x, confirmed 2.20x (longer))"
