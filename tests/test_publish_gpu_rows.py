"""scripts/publish_gpu_rows.py: the rows of a GPU check that the published GPU speed-ups lack are added, stamped
with their code, and nothing else moves; a check on another GPU or torch is refused."""

from __future__ import annotations

import json

import pytest

SCRIPT = "scripts/publish_gpu_rows.py"
MACHINE = {"gpu": "NVIDIA H200", "driver": "580", "torch": "2.11.0+cu130", "precision": "fp16",
           "timing": "fp16, CUDA graphs", "code": "old", "date_utc": "2026-11-30"}


def _entry(speedup: float) -> dict:
    return {"speedup": speedup, "macs_kept": 0.5}


def _files(tmp_path, published: dict, check: dict):
    (tmp_path / "published.json").write_text(json.dumps(published))
    (tmp_path / "check.json").write_text(json.dumps(check))
    return ["--published", str(tmp_path / "published.json"), "--check", str(tmp_path / "check.json")]


def _report(machine: dict, equal: list, budgets: list, skipped: list, latency: list = ()) -> dict:
    return {"machine": machine, "equal_macs": equal, "latency_choice": list(latency), "budgets": budgets,
            "widths": [], "skipped": skipped}


def test_rows_the_published_file_lacks_are_added_with_their_code_and_nothing_else_moves(load_script, tmp_path):
    published_equal = {"model": "a", "batch": 32, "dense_ms": 3.0, "prunefx": _entry(1.17)}
    failed_budget = {"model": "a", "batch": 32, "speedup_asked": 1.5, "error": "timed out"}
    published = _report(MACHINE, [published_equal], [failed_budget],
                         ["a: --speedup 1.5 at batch 32 (time limit)", "b: equal-MACs row at batch 32 (time limit)"])
    new_budget = {"model": "a", "batch": 32, "speedup_asked": 1.5, "choice": "latency", "remeasured": 1.65,
                  "macs_kept": 0.48, "within": True}
    check = _report({**MACHINE, "code": "new", "date_utc": "2026-12-04"},
                    [{"model": "a", "batch": 32, "dense_ms": 3.1, "prunefx": _entry(1.30)}], [new_budget], [])
    assert load_script(SCRIPT).main(_files(tmp_path, published, check)) == 0
    result = json.loads((tmp_path / "published.json").read_text())
    assert result["equal_macs"] == [published_equal]  # the published row stays, not the check's 1.30x
    assert result["budgets"] == [{**new_budget, "code": "new", "date_utc": "2026-12-04"}]  # the failure replaced
    assert result["skipped"] == ["b: equal-MACs row at batch 32 (time limit)"]
    assert result["machine"] == MACHINE
    markdown = (tmp_path / "published.md").read_text()
    assert "| a | 32 | 1.5x | width | latency | 1.65x |" in markdown and "1.30x" not in markdown


def test_a_check_on_another_gpu_is_refused_and_nothing_is_written(load_script, tmp_path):
    published = _report(MACHINE, [], [], [])
    check = _report({**MACHINE, "gpu": "NVIDIA H100"}, [{"model": "a", "batch": 32, "prunefx": _entry(1.2)}], [], [])
    argv = _files(tmp_path, published, check)
    before = (tmp_path / "published.json").read_text()
    with pytest.raises(SystemExit, match="another gpu"):
        load_script(SCRIPT).main(argv)
    assert (tmp_path / "published.json").read_text() == before and not (tmp_path / "published.md").exists()


def _latency_row(model: str, kept: float, speedup: float) -> dict:
    return {"model": model, "batch": 32, "dense_ms": 5.0, "prunefx": _entry(1.2),
            "prunefx latency": {"speedup": speedup, "macs_kept": kept}}


def test_a_latency_choice_at_other_macs_is_replaced_by_one_at_equal_macs(load_script, tmp_path):
    """0.44 of the MACs against the defaults' 0.50 compares nothing: the check's row at 0.50 takes its place, while
    a row at equal MACs stays as published."""
    apart, held = _latency_row("swin", 0.44, 1.39), _latency_row("resnet", 0.51, 1.61)
    published = _report(MACHINE, [], [], [], latency=[apart, held])
    check = _report({**MACHINE, "code": "new"}, [], [], [],
                    latency=[_latency_row("swin", 0.50, 1.25), _latency_row("resnet", 0.50, 1.40)])
    assert load_script(SCRIPT).main(_files(tmp_path, published, check)) == 0
    rows = json.loads((tmp_path / "published.json").read_text())["latency_choice"]
    assert [(row["model"], row["prunefx latency"]["speedup"]) for row in rows] == [("swin", 1.25), ("resnet", 1.61)]


def test_a_refusal_published_from_the_same_check_is_not_added_again(load_script, tmp_path, capsys):
    """A refused budget holds no figure, so the next check measures it again; publishing the check that refused it
    a second time changes nothing."""
    refused = {"model": "a", "batch": 1, "speedup_asked": 1.3, "refused": "by width: 1.18x at best"}
    check = _report({**MACHINE, "code": "new", "date_utc": "2026-12-04"}, [], [refused], [])
    published = _report(MACHINE, [], [{**refused, "code": "new", "date_utc": "2026-12-04"}], [])
    argv = _files(tmp_path, published, check)
    before = (tmp_path / "published.json").read_text()
    assert load_script(SCRIPT).main(argv) == 0
    assert json.loads((tmp_path / "published.json").read_text()) == json.loads(before)
    assert "0 rows added" in capsys.readouterr().out
