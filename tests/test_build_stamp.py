"""A resumed benchmark run keeps its cache only where the code that filled it is the code on disk now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import build_stamp  # noqa: E402
import run_all  # noqa: E402


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with one library file, one benchmark script, a results file and run_all.py."""
    files = {"passes/prune.py": "KEEP = 0.5\n", "benchmarks/speed.py": "RUNS = 10\n",
             "benchmarks/results/speed.json": "{}\n", "benchmarks/run_all.py": "PLAN = 1\n",
             "docs/index.md": "# docs\n"}
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    return tmp_path


def test_the_stamp_covers_the_library_and_scripts_not_results_docs_or_orchestration(repo):
    assert build_stamp.deciding_files(repo) == ["benchmarks/speed.py", "passes/prune.py"]


def test_a_folder_filled_by_the_same_code_resumes_whatever_else_changed(repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    build_stamp.write_stamp(folder, repo)
    (repo / "benchmarks/results/speed.json").write_text('{"speedup": 2}\n')
    (repo / "benchmarks/run_all.py").write_text("PLAN = 2\n")
    (repo / "docs/index.md").write_text("# other docs\n")
    build_stamp.check_stamp(folder, repo)  # raises on a mismatch


@pytest.mark.parametrize("path", ["passes/prune.py", "benchmarks/speed.py"])
def test_an_uncommitted_edit_of_a_deciding_file_refuses_the_resume(repo, tmp_path_factory, path):
    folder = tmp_path_factory.mktemp("bench")
    build_stamp.write_stamp(folder, repo)
    (repo / path).write_text((repo / path).read_text() + "# edited\n")
    with pytest.raises(build_stamp.StampMismatch, match="other code"):
        build_stamp.check_stamp(folder, repo)


def test_a_filled_folder_without_a_stamp_is_refused_and_an_empty_one_stamped(repo, tmp_path_factory):
    filled = tmp_path_factory.mktemp("filled")
    (filled / "baseline.pt2").write_bytes(b"weights")
    with pytest.raises(build_stamp.StampMismatch, match="unknown code"):
        build_stamp.check_stamp(filled, repo)
    empty = tmp_path_factory.mktemp("empty")
    build_stamp.check_stamp(empty, repo)
    assert (empty / build_stamp.STAMP_NAME).is_file()


def test_run_all_resume_exits_2_with_one_line_and_runs_nothing_on_a_mismatch(tmp_path, monkeypatch, capsys):
    (tmp_path / "cached.json").write_text("{}")  # a cache without a stamp
    monkeypatch.setattr(run_all, "FRESH_BUILD", tmp_path)
    monkeypatch.setattr(run_all, "run", lambda *_: pytest.fail("a run started"))
    assert run_all.main(["--resume", "--only", "combing_time"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "rerun without --resume" in error
    assert (tmp_path / "cached.json").is_file()  # the cache is left as found


def test_only_plans_the_named_runs_in_published_order():
    plan = run_all.planned(everything=False, only=["detection_scenes", "combing_time"])
    assert [label for label, *_ in plan] == ["detection_scenes", "combing_time"]
    assert plan[0][1][0] == "benchmarks/detection_scenes.py"
