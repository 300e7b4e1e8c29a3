"""benchmarks/headline_reproduction.py: every benchmark is either compared or said not to be rerun, and its
rules judge hand-picked figures the way they say."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script():
    if str(BENCHMARKS) not in sys.path:  # the script imports its sibling `common`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("headline_reproduction")


def test_every_benchmark_is_compared_or_has_a_reason():
    script = _script()
    names = script.benchmarks()
    on_disk = {p.stem for p in BENCHMARKS.glob("*.py")} - {"common", "run_all", "headline_reproduction"}
    assert set(names) == on_disk
    assert set(script.COMPARE) <= set(script.RERUN) and not set(script.COMPARE) & set(script.NOT_RERUN)


@pytest.mark.parametrize("published, rerun, rule, within", [
    (62, 62, "exact", True), (62, 61, "exact", False), ("a, b", "a, c", "exact", False),
    (89.88, 89.5, "abs 0.5", True), (89.88, 89.3, "abs 0.5", False),
    (6e-7, 9e-6, "below 1e-5", True), (6e-7, 2e-5, "below 1e-5", False),
    (2.0, 2.19, "rel 0.1", True), (2.0, 1.79, "rel 0.1", False), (0.0, 0.0, "rel 0.1", False),
    (1.15, 0.4, "timing", None),
])
def test_rules_judge_as_documented(published, rerun, rule, within):
    row = _script().figure("f", published, rerun, rule)
    assert row["within"] is within
    if isinstance(published, float):
        assert row["difference"] == pytest.approx(rerun - published)


def test_a_published_file_compared_with_itself_reproduces():
    script = _script()
    for name, compare in script.COMPARE.items():
        data = json.loads((BENCHMARKS / "results" / f"{script.RESULTS_FILE.get(name, name)}.json").read_text())
        assert all(row["within"] is not False for row in compare(data, data)), name


@pytest.mark.parametrize("published, rerun, seeds, within", [
    (62.28, 72.64, {"seed-1": 60.1, "seed-2": 70.0}, True),  # inside the seeds' range
    (62.28, 72.64, {"seed-1": 61.5}, True),  # 0.78 below the lowest seed, inside the tolerance of 1
    (62.28, 72.64, {"seed-1": 70.0, "seed-2": 75.0}, False),  # every seed far above
    (62.28, 72.64, {"at-84b09d7": 62.28}, None),  # a run at another commit is not a seed
])
def test_seed_spread_covers_a_published_figure_only_between_the_seeds(published, rerun, seeds, within):
    row = _script().figure("f", published, rerun, "abs 1")
    row["variants"] = seeds
    assert _script().within_seed_spread(row) is within


def test_an_exact_figure_is_never_excused_by_seeds():
    row = _script().figure("f", 26, 25, "exact")
    row["variants"] = {"seed-1": 26}
    assert _script().within_seed_spread(row) is None


def test_runs_trained_at_another_commit_are_not_seeds_of_todays_code():
    row = _script().figure("f", 37.16, 35.06, "abs 0.5")
    row["variants"] = {"dense-at-08bf9aa-seed-1": 37.0, "seed-1": 34.0}
    assert _script().within_seed_spread(row) is False  # 37.16 is far above 34.0-35.06 + 0.5


def test_a_seed_sweep_is_one_column_showing_its_range():
    script = _script()
    folders = ["at-08bf9aa", "dense-at-08bf9aa", "seed-1", "seed-2", "seed-10",
               "dense-at-08bf9aa-seed-0", "dense-at-08bf9aa-seed-1", "dense-at-08bf9aa-seed-2"]
    columns = script._columns(folders)
    assert list(columns) == ["at-08bf9aa", "dense-at-08bf9aa", "seed-1..10 (range)", "dense-at-08bf9aa-seed-0..2 (range)"]
    row = script.figure("f", 37.16, 35.06, "abs 0.5")
    row["variants"] = {"seed-1": 36.5, "seed-2": 34.9, "seed-10": 35.5}
    assert script._cell(row, columns["seed-1..10 (range)"]) == "34.9 to 36.5"
    assert script._columns(["seed-1", "seed-2"]) == {"seed-1": ["seed-1"], "seed-2": ["seed-2"]}


def test_a_partial_rerun_is_compared_only_where_it_has_the_published_run():
    """fashion_mnist_accuracy reruns one model and two variants: each rerun row meets the published row of the
    same model, variant, loss and fraction, and rows it did not make are neither compared nor invented."""
    script = _script()
    published = json.loads((BENCHMARKS / "results" / "fashion_mnist_accuracy.json").read_text())
    kept = [run for run in published["runs"] if run["model"] == "resnet20" and run["fraction"] == 0.5
            and run["variant"] == "tp-l2" and run["loss"] == "kd"]
    rerun = {"baselines": {"resnet20": {**published["baselines"]["resnet20"], "test_accuracy": 0.9}},
             "runs": [{**kept[0], "test_accuracy": kept[0]["test_accuracy"] - 0.02}]}
    rows = {row["figure"]: row for row in script._fashion_mnist_accuracy(published, rerun)}
    assert set(rows) == {"resnet20 dense test %", "resnet20 tp-l2 kd at 0.5: MACs kept",
                         "resnet20 tp-l2 kd at 0.5: one-shot test %", "resnet20 tp-l2 kd at 0.5: test % after recovery"}
    assert rows["resnet20 dense test %"]["within"] is False  # 92.90 -> 90.00
    assert rows["resnet20 tp-l2 kd at 0.5: test % after recovery"]["difference"] == pytest.approx(-2.0)
    assert rows["resnet20 tp-l2 kd at 0.5: test % after recovery"]["within"] is False


def test_sparsity_holds_the_recovered_accuracy_to_a_tighter_rule_than_the_one_shot():
    script = _script()
    published = json.loads((BENCHMARKS / "results" / "sparsity_accuracy.json").read_text())
    rows = {row["figure"]: row for row in script._sparsity_accuracy(published, published)}
    assert rows["obs one-shot: test %"]["rule"] == "abs 1" and rows["obs kd: test %"]["rule"] == "abs 0.5"
    assert rows["cap kd: 2:4 violations"]["published"] == 0 and rows["cap one-shot: layers made 2:4"]["published"] == 20


@pytest.mark.parametrize("variants, same", [
    ({"at-397f5bd": 15.81, "dense-at-397f5bd": 15.81}, True),  # old and new code agree on one model
    ({"at-397f5bd": 15.81, "dense-at-397f5bd": 13.2}, False),  # the passes moved it
    ({"at-397f5bd": 15.81, "seed-1": 10.8}, None),  # no pair: nothing to say
    ({"at-4a01c07": 91.5, "dense-at-397f5bd": 91.9}, True),  # within the rule's 1 point
])
def test_same_weights_excuses_a_figure_only_where_old_and_new_code_agree_on_one_model(variants, same):
    script = _script()
    row = script.figure("f", 10.82, 15.2, "abs 1")
    row["variants"] = variants
    pairs = [("at-397f5bd", "dense-at-397f5bd"), ("at-4a01c07", "dense-at-397f5bd")]
    assert script.same_in_pairs(row, pairs) is same
    row["within_seeds"], row["same_weights"] = None, same
    assert script._verdict(row) == ("same on the same weights" if same else "**no**")


def test_a_timing_figure_is_never_judged_on_the_same_weights():
    script = _script()
    timing = script.figure("f", 1.2, 1.5, "timing")
    timing["variants"] = {"at-397f5bd": 1.0, "dense-at-397f5bd": 2.0}
    assert script.same_in_pairs(timing, [("at-397f5bd", "dense-at-397f5bd")]) is None


def test_the_rerun_itself_can_be_the_today_side_of_a_same_weights_pair():
    script = _script()
    row = script.figure("f", 84.91, 83.0, "abs 0.5")
    row["variants"] = {"at-a1297da": 83.1}
    assert script.same_in_pairs(row, [("at-a1297da", "rerun")]) is True
    row["variants"] = {"at-a1297da": 84.9}
    assert script.same_in_pairs(row, [("at-a1297da", "rerun")]) is False


def test_a_ratio_another_cpu_moved_is_excused_only_where_publishing_and_todays_code_agree_here():
    script = _script()
    row = script.figure("f", 2.07, 1.60, "rel 0.1")  # published on the AMD machine, rerun on this one
    assert row["within"] is False
    row["within_seeds"], row["same_weights"] = None, None
    for publishing_code, same in ((1.65, True), (2.05, False)):  # the publishing commit timed here
        row["variants"] = {"at-45c4a83": publishing_code}
        row["same_machine"] = script.same_in_pairs(row, [("at-45c4a83", "rerun")])
        assert row["same_machine"] is same
        assert script._verdict(row) == ("same on this machine" if same else "**no**")


def test_a_benchmark_excused_only_on_this_machine_is_given_that_status_not_reproduced():
    script = _script()
    entry = {"reproduced": False, "within_seed_spread": False, "same_on_same_weights": False,
             "same_on_this_machine": True}
    assert script._status(entry) == "machine"
    assert script._status({**entry, "same_on_this_machine": False}) == "no"


@pytest.mark.parametrize("there, verdict", [(2.10, "yes on the publishing CPU"), (1.70, "**no**"), (None, "**no**")])
def test_a_figure_counts_as_reproduced_on_the_publishing_cpu_only_where_todays_code_gives_it_there(there, verdict):
    script = _script()
    row = script.figure("f", 2.07, 2.54, "rel 0.1")  # published on one CPU, rerun on another
    row["variants"] = {} if there is None else {script.PUBLISHING_CPU: there}
    row["on_publishing_cpu"] = script.on_publishing_cpu(row)
    row["within_seeds"] = row["same_weights"] = row["same_machine"] = None
    assert script._verdict(row) == verdict


def test_a_timing_figure_is_never_judged_on_the_publishing_cpu():
    script = _script()
    row = script.figure("f", 1.2, 3.0, "timing")
    row["variants"] = {script.PUBLISHING_CPU: 1.2}
    assert script.on_publishing_cpu(row) is None


def test_a_publishing_cpu_run_from_another_machine_is_refused():
    script = _script()
    machine = {"cpu": "AMD EPYC", "avx512": False, "avx2": True, "usable_cpus": 2, "logical_cpus": 2,
               "python": "3.11.7", "versions": {"torch": "2.14.1", "onnxruntime": "1.31.1"}}
    published = {"machine": machine}
    same = {script.PUBLISHING_CPU: {"machine": dict(machine)}}
    script._check_publishing_cpu("process_rounds", published, same)  # the same CPU: accepted
    other = {script.PUBLISHING_CPU: {"machine": {**machine, "cpu": "Intel(R) Xeon(R) Processor"}}}
    with pytest.raises(SystemExit, match="process_rounds"):
        script._check_publishing_cpu("process_rounds", published, other)


def test_a_benchmark_is_reproduced_on_the_publishing_cpu_only_if_that_one_run_gives_every_judged_figure(tmp_path,
                                                                                                       monkeypatch):
    script = _script()
    machine = {"cpu": "AMD EPYC", "avx512": False, "avx2": True, "usable_cpus": 2, "logical_cpus": 2,
               "python": "3.11.7", "versions": {"torch": "2.14.1", "onnxruntime": "1.31.1"}}
    def run(read, step):
        return {"machine": machine, "routes": [{"read_ms_per_batch": read, "step_ms": step},
                                                {"read_ms_per_batch": 1.0, "step_ms": 100.0}]}
    published, rerun = tmp_path / "published", tmp_path / "reproduced"
    (rerun / script.PUBLISHING_CPU).mkdir(parents=True)
    published.mkdir()
    (published / "fashion_mnist_loading.json").write_text(json.dumps(run(12.5, 103.7)))
    (rerun / "fashion_mnist_loading.json").write_text(json.dumps(run(7.4, 104.5)))  # read speed-up moved elsewhere
    monkeypatch.setattr(script, "PUBLISHED", published)
    monkeypatch.setattr(script, "REPRODUCED", rerun)
    for step_there, status in ((104.0, "cpu"), (113.0, "no")):  # the step ratio outside its rule there: a mix
        (rerun / script.PUBLISHING_CPU / "fashion_mnist_loading.json").write_text(json.dumps(run(12.2, step_there)))
        entry = script.entry("fashion_mnist_loading")
        assert [f["on_publishing_cpu"] for f in entry["figures"]] == [True, status == "cpu"]
        assert script._status(entry) == status


def test_reproduced_on_the_publishing_cpu_ranks_below_reproduced_and_above_the_excuses():
    script = _script()
    entry = {"reproduced": False, "reproduced_on_publishing_cpu": True, "within_seed_spread": True,
             "same_on_same_weights": True, "same_on_this_machine": True}
    assert script._status(entry) == "cpu"
    assert script._status({**entry, "reproduced": True}) == "reproduced"
    assert script._status({**entry, "reproduced_on_publishing_cpu": False}) == "seeds"
