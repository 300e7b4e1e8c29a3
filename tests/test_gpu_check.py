"""scripts/gpu_check.py's step runner: every step under its own timeout inside the whole check's limit, so one
hung step costs its own time and the rest still run. (The whole check runs on a CPU with `make gpu-check-smoke`.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

SCRIPT = "scripts/gpu_check.py"


HANGS_WITH_A_CHILD = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                      "'import time; time.sleep(60)']); open('child.pid', 'w').write(str(child.pid)); "
                      "print('started', flush=True); time.sleep(60)")


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_hung_step_is_stopped_at_its_timeout_with_its_children_and_the_next_still_runs(load_script, tmp_path):
    steps = load_script(SCRIPT).Steps(tmp_path, seconds=60, env=None)
    steps.shortest = 2  # the hang need not last the 10 s a real step is given at least
    assert steps.run("hangs", [sys.executable, "-c", HANGS_WITH_A_CHILD], timeout=3, log="hangs.log") is None
    assert (tmp_path / "hangs.log").read_text().strip() == "started"  # written as printed: a kill keeps it
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)
    assert steps.run("works", [sys.executable, "-c", "print('done')"], timeout=30, log="works.log") == 0
    hung, works = steps.steps
    assert hung["timed_out"] and 3 <= hung["seconds"] < 10
    assert works["exit"] == 0 and (tmp_path / "works.log").read_text().strip() == "done"


def test_a_step_without_time_left_is_listed_as_skipped(load_script, tmp_path):
    steps = load_script(SCRIPT).Steps(tmp_path, seconds=12, env=None)
    assert steps.run("late", [sys.executable, "-c", "pass"], timeout=60) is None
    assert steps.steps == [{"step": "late", "skipped": "no time left"}]


def test_the_wheels_carried_are_pinned_to_the_versions_tested_here(load_script):
    script = load_script(SCRIPT)
    assert script._pinned("foolbox==3.3.4") == "foolbox==3.3.4"
    assert script._pinned("torch-pruning").startswith("torch-pruning==")


def test_only_the_files_with_gpu_tests_are_collected_there(load_script):
    files = [Path(name).name for name in load_script(SCRIPT).gpu_test_files()]
    assert "test_cuda_backend.py" in files and "test_gpu_check.py" not in files
    decorated = [line for name in files for line in (Path(__file__).parent / name).read_text().splitlines()
                 if line == "@pytest.mark.gpu"]
    assert len(decorated) >= len(files)


def test_small_results_are_folded_into_the_summary_so_at_most_eight_files_come_back(load_script, tmp_path):
    (tmp_path / "gpu_remeasure.json").write_text('{"speedup": 1.59}')
    folded = load_script(SCRIPT)._folded(tmp_path, ("gpu_remeasure.json", "gpu_module_speed.json"))
    assert folded == {"gpu_remeasure": {"speedup": 1.59}} and not (tmp_path / "gpu_remeasure.json").exists()


def test_a_failure_between_steps_is_one_entry_and_the_check_goes_on(load_script, tmp_path):
    steps = load_script(SCRIPT).Steps(tmp_path, seconds=60, env=None)
    with steps.guarded("budget"):
        (tmp_path / "budget_prune" / "report.json").read_text()  # the step that writes it failed
    assert steps.run("next", [sys.executable, "-c", "print('ran')"], timeout=30) == 0
    error, ran = steps.steps
    assert error["step"] == "budget" and error["error"].startswith("FileNotFoundError") and ran["exit"] == 0


def test_a_results_file_a_killed_step_left_half_written_is_kept_and_said(load_script, tmp_path):
    (tmp_path / "gpu_remeasure.json").write_text('{"speedup": 1.')
    folded = load_script(SCRIPT)._folded(tmp_path, ("gpu_remeasure.json",))
    assert "unreadable" in folded["gpu_remeasure"] and (tmp_path / "gpu_remeasure.json").exists()


def test_a_checkout_edited_after_the_wheel_was_built_is_said_to_be_stale(load_script, tmp_path, monkeypatch):
    """The tests run from the checkout, prunefx from the wheel: an edit after `make gpu-check-prepare` ran new
    tests against old code. The GPU machine has no git: the files the stamp was taken over travel beside it."""
    script = load_script(SCRIPT)
    root, wheels = tmp_path / "repo", tmp_path / "carried" / "wheels"
    (root / "graph").mkdir(parents=True)
    wheels.mkdir(parents=True)
    (root / "graph" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(script, "ROOT", root)
    monkeypatch.setattr(script, "_wheels", lambda smoke: wheels)
    assert script._stale_wheel(False) is None  # no list of files: cannot tell
    (wheels.parent / script.STAMP_FILES).write_text("graph/a.py\n")
    (wheels.parent / script.STAMP).write_text(script.build_stamp.digest_of(["graph/a.py"], root) + "\n")
    assert script._stale_wheel(False) is False
    (root / "graph" / "a.py").write_text("x = 2\n")
    assert script._stale_wheel(False) is True


def test_only_a_budget_out_of_reach_is_a_refusal_and_not_a_failure(load_script):
    refused = load_script(SCRIPT)._refused
    assert refused({"exit": 2, "tail": ["prunefx prune: error: cannot reach a 1.5x speed-up by width: ..."]})
    assert not refused({"exit": 2, "tail": ["prunefx prune: error: model file budget_dense.pt2 not found"]})
    assert not refused({"exit": 1, "tail": ["cannot reach"]}) and not refused({"exit": None, "timed_out": True})
