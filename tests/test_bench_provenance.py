"""Every published figure comes from a results file, and every results file from a command that makes it from scratch.

- The README's headline tables are exactly what scripts/readme_results.py makes of benchmarks/results/*.json;
  each figure of a benchmark page's text is a value of a results file the page shows.
- benchmarks/published.py (what `make bench` and `make bench-all` run) has one run for each results file: a
  script that exists and takes every option given, no option that reuses an earlier run; each README row says
  which target reruns it, and `make bench` is planned within its 95 minutes.
- Each results file records that run's command (where its files went aside: LOCATION_OPTIONS). The files in
  AWAITING_RERUN do not: they merge several runs, or reran only some rows. The files in MEASURED_APART timed
  their variants one after another, before their scripts timed them round by round. The next `make bench-all`
  on a quiet machine rewrites both, and these lists must then shrink (a file on one that no longer belongs
  there fails the test too).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
GPU_CHECK = BENCHMARKS / "gpu_check"  # what `make gpu-check` brought back (its README)
for folder in (BENCHMARKS, ROOT / "scripts"):
    if str(folder) not in sys.path:  # published.py and common.py are imported as the benchmarks import them
        sys.path.insert(0, str(folder))

import common  # noqa: E402
import published  # noqa: E402
import readme_results  # noqa: E402

# Options that make a run read what an earlier run left instead of measuring.
REUSING = {"--report-only", "--reuse", "--update", "--markdown-from", "--merge", "--append", "--retime", "--cache"}

# Options that say where a run's files go, or what else ran on the machine: no setting of the measurement.
LOCATION_OPTIONS = {"--output-dir", "--results-name", "--note"}

# Files that merge several runs, or reran only some rows: gpu_speedup's rows come from several `make gpu-check`s
# (make gpu-publish adds the rows a check measured that the file lacks, each stamped with its code).
AWAITING_RERUN: set[str] = {"gpu_speedup"}
# Scripts whose variants are timed against the dense model round by round (common.side_by_side, or their own
# rounds): a results file of theirs without each round's speed-up timed its variants one after another.
ROUND_BY_ROUND = {"latency_aware_choice", "fashion_mnist_accuracy", "dense_tasks", "detection_scenes",
                  "depth_vs_channel", "detector_pruning"}
MEASURED_APART: set[str] = set()
# Scripts whose speed-ups are the runtime's one statistic (common.speedup_fields: the ratio of the pooled medians,
# with its interval and `confidence`, as `prunefx bench --vs` states it): a results file of theirs whose speed-ups
# have no `confidence` took the median of its rounds (or gave no interval), and awaits the next `make bench`.
RUNTIME_STATISTIC = {"latency_aware_choice", "fashion_mnist_accuracy", "dense_tasks", "detection_scenes",
                     "depth_vs_channel", "detector_pruning", "prune_latency", "fold_batchnorm_latency",
                     "depth_pruning", "int8_latency", "int8_after_pruning"}
MEDIAN_OF_ROUNDS = {"fashion_mnist_accuracy"}


def recorded_command(name: str) -> str | None:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return (data.get("provenance") or {}).get("command") or data.get("command")


def test_the_readme_headline_tables_are_made_from_the_results_files():
    readme = (ROOT / "README.md").read_text()
    assert readme_results.readme_with(readme_results.tables(), readme) == readme
    section = readme[readme.index(readme_results.BEGIN):readme.index(readme_results.END)]
    assert section.count(readme_results.HEADER) >= 2  # one table per machine, and more than one machine


def test_every_figure_of_a_headline_row_is_in_its_results_file():
    """An independent look at the same claim: each number a row shows is a value of its file, rounded as
    shown (x2.00 as a speed-up, 91.41 as a percentage, -0.60 as percentage points, ...)."""
    for row in readme_results.ROWS:
        data = json.loads((RESULTS / f"{row.results}.json").read_text())
        values = _numbers(data)
        cell = row.result(data)
        for figure in re.findall(r"(?<![\w.])[+-]?\d+\.\d+", cell):
            shown = float(figure)
            assert any(_rounds_to(value, shown, figure) for value in values), (row.results, figure, cell)


def _numbers(data) -> list[float]:
    """Every number in the file, and the differences of any two (accuracy points against the dense model)."""
    found: list[float] = []

    def walk(value):
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            found.append(float(value))
        elif isinstance(value, dict):
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(data)
    unique = sorted(set(found))
    small = [value for value in unique if 0 < abs(value) <= 1]  # accuracies, mIoU, mAP
    return unique + [a - b for a in small for b in small]


def _rounds_to(value: float, shown: float, text: str) -> bool:
    """`value` as a page shows it: itself, a percentage, or millions (MACs)."""
    decimals = len(text.split(".")[1])
    return any(round(candidate, decimals) == shown for candidate in (value, 100 * value, value / 1e6))


# Figures of the benchmark pages that are no measurement: settings and names ("pruned to 0.5 and 0.3 of their MACs",
# "percentile 99.99", "RegNetY-1.6GF").
PAGE_SETTINGS = {("index.md", "0.5"), ("index.md", "0.3"), ("int8.md", "99.99"), ("process-rounds.md", "1.6"),
                  ("process-rounds.md", "1.05"), ("process-rounds.md", "0.27")}  # 0.27: the pair of files timed
# Measured figures of the pages that no results file of the page holds yet: each needs its run's results file.
PAGE_FIGURES_WITHOUT_RESULTS = {("fashion-mnist-accuracy.md", "92.34")}


def test_every_figure_of_a_benchmark_page_is_in_the_results_files_it_shows():
    """Each decimal figure in a benchmark page's text (code blocks aside) is a value of a results file the page
    shows or names (benchmarks/results/, or the GPU check's benchmarks/gpu_check/), as shown (or a difference of
    two, as accuracy points are): a rerun that moves a figure fails here until the page's text follows it."""
    unsupported = set()
    for page in sorted((ROOT / "docs" / "benchmarks").glob("*.md")):
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        names = set(re.findall(r"prunefx:results (\w+)", text)) | set(re.findall(r"results/(\w+)\.(?:md|json)", text))
        files = [RESULTS / f"{name}.json" for name in sorted(names)]
        files += [GPU_CHECK / f"{name}.json" for name in sorted(set(re.findall(r"gpu_check/(\w+)\.json", text)))]
        values = [value for path in files if path.is_file() for value in _numbers(json.loads(path.read_text()))]
        for figure in re.findall(r"(?<![\w.])[+-]?\d+\.\d+", text):
            if not any(_rounds_to(value, float(figure), figure) for value in values):
                unsupported.add((page.name, figure))
    assert unsupported - PAGE_SETTINGS == PAGE_FIGURES_WITHOUT_RESULTS


def test_every_results_file_has_exactly_one_run_that_makes_it():
    names = sorted(path.stem for path in RESULTS.glob("*.json"))
    runs = [run.results for run in published.RUNS]
    assert sorted(runs) == names


def test_every_run_is_from_scratch_with_options_its_script_takes():
    for run in published.RUNS:
        script = BENCHMARKS / f"{run.script}.py"
        source = script.read_text()
        options = [argument for argument in run.arguments if argument.startswith("--")]
        assert not REUSING & set(options), run
        for option in options:
            assert f'"{option}"' in source, f"benchmarks/{run.script}.py takes no {option}"
        assert not any(argument.startswith("/tmp") for argument in run.arguments), run
        assert run.lane in published.LANES and run.needs in (None, "gpu")


def test_every_readme_row_is_rerun_and_says_by_which_target():
    bench = {run.results for run in published.runs("bench")}
    for row in readme_results.ROWS:
        target = "`make bench`" if row.results in bench else "`make bench-all`"
        assert row.cells(readme_results.lanes())[-1] == target, row.results
    assert {"prune_zoo", "write_back_coverage"} <= bench  # coverage with today's defaults


def test_make_bench_is_planned_within_its_minutes():
    """`make bench` fits about 95 minutes on 2 cores: its runs' planned minutes add up to at most BENCH_MINUTES
    (a run that moves into the lane, or an estimate that grows, has to push another run to `make bench-all`)."""
    assert all(run.minutes > 0 for run in published.RUNS)
    assert sum(run.minutes for run in published.runs("bench")) <= published.BENCH_MINUTES


def settings(argv: list[str]) -> list[str]:
    """`argv` without LOCATION_OPTIONS and their values; a path under run_all.py's build/bench/ as under build/,
    where a run started by hand keeps its files (common.BUILD)."""
    kept, skip = [], False
    for argument in argv:
        if not skip and argument not in LOCATION_OPTIONS:
            kept.append(re.sub(r"^build/bench/", "build/", argument))
        skip = argument in LOCATION_OPTIONS
    return kept


def test_each_results_file_records_the_command_of_its_run_or_awaits_its_rerun():
    recorded = {run.results: recorded_command(run.results) for run in published.RUNS}
    matching = {run.results for run in published.RUNS if recorded[run.results] is not None
                and settings(shlex.split(recorded[run.results])[1:]) == settings(run.argv())}
    assert set(recorded) - matching == AWAITING_RERUN


def records(data, wanted) -> list[dict]:
    """Every dict at any depth of `data` for which `wanted(the key it is under, the dict)` holds."""
    found = []

    def walk(value, key=None):
        if isinstance(value, dict):
            if wanted(key, value):
                found.append(value)
            for inner_key, inner in value.items():
                walk(inner, inner_key)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, key)

    walk(data)
    return found


def timings_against_dense(data) -> list[dict]:
    """Every record of a variant timed against the dense model: `latency` records, latency_aware_choice's rows."""
    return [*data.get("equal_macs", []), *records(data, lambda key, value: key == "latency" and "speedup" in value)]


def test_the_variants_of_a_comparison_were_timed_round_by_round_or_await_a_rerun():
    apart = set()
    for run in published.RUNS:
        if run.script in ROUND_BY_ROUND:
            timings = timings_against_dense(json.loads((RESULTS / f"{run.results}.json").read_text()))
            if not all("round_speedups" in timing for timing in timings):  # a file without timings passes
                apart.add(run.results)
    assert apart == MEASURED_APART


def speedup_records(data) -> list[dict]:
    """Every record that states a speed-up of one model against another (`speedup`, int8_latency's
    `speedup_vs_fp32`)."""
    return records(data, lambda key, value: "speedup" in value or "speedup_vs_fp32" in value)


def test_the_speedups_are_the_runtimes_statistic_or_await_a_rerun():
    stale = set()
    for run in published.RUNS:
        if run.script in RUNTIME_STATISTIC:
            records = speedup_records(json.loads((RESULTS / f"{run.results}.json").read_text()))
            if not all("confidence" in record for record in records):  # a file without speed-ups passes
                stale.add(run.results)
    assert stale == MEDIAN_OF_ROUNDS


def test_side_by_side_times_every_variant_in_each_round_in_turned_order(monkeypatch):
    compared = []

    def recording(make_a, make_b, *settings):
        compared.append(make_b().__name__)
        return timing_round(make_a, make_b, *settings)

    timing_round = common.timing_round
    monkeypatch.setattr(common, "timing_round", recording)

    def a():
        pass

    def b():
        pass

    timed = common.side_by_side(lambda: None, {"a": a, "b": b}, rounds=3, runs=10, warmup=1)
    assert compared == ["a", "b", "b", "a", "a", "b"]
    assert all(len(result["round_speedups"]) == 3 and result["speedup"] > 0 for result in timed.values())


def test_side_by_side_states_the_runtimes_pooled_speedup_and_its_interval_over_the_rounds(monkeypatch):
    """Scripted blocks (a slow spell in rounds 2 and 3 that slows the dense model more): the speed-up is median(every
    dense run) / median(every pruned run), as compare_rounds and `prunefx bench --vs` pool it, with Student's t
    over the rounds' log-ratios (scipy), not the median of the rounds' speed-ups; each round's own ratio is kept."""
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(1)
    spell = {0: (1.0, 1.0), 1: (2.0, 1.5), 2: (2.0, 1.5), 3: (1.0, 1.0)}  # round -> (dense, pruned) slow-down
    pruned_s = {"half": 0.010, "third": 0.008}
    script = {(name, r): ([list(0.020 * spell[r][0] * rng.uniform(0.95, 1.05, 10)) for _ in range(2)],
                          [list(pruned_s[name] * spell[r][1] * rng.uniform(0.95, 1.05, 10)) for _ in range(2)])
              for name in pruned_s for r in spell}
    done = {name: 0 for name in pruned_s}

    def scripted(make_a, make_b, warmup, runs, block, settle, clock, threads):
        name = make_b()
        done[name] += 1
        return (*script[name, done[name] - 1], threads, threads)

    monkeypatch.setattr(common, "timing_round", scripted)
    timed = common.side_by_side("dense", {name: name for name in pruned_s}, rounds=4, runs=20, threads=2)
    for name, result in timed.items():
        dense = [np.concatenate(script[name, r][0]) for r in spell]
        pruned = [np.concatenate(script[name, r][1]) for r in spell]
        each = [np.median(a) / np.median(b) for a, b in zip(dense, pruned)]
        pooled = np.median(np.concatenate(dense)) / np.median(np.concatenate(pruned))
        half = stats.t.ppf(0.95, 3) * np.std(np.log(each), ddof=1) / 2
        assert result["speedup"] == pytest.approx(pooled, rel=1e-12)
        assert (result["speedup_low"], result["speedup_high"]) == pytest.approx(
            (pooled * np.exp(-half), pooled * np.exp(half)), rel=1e-12)
        assert result["confidence"] == 0.9 and result["round_speedups"] == pytest.approx(each, rel=1e-12)
        assert result["dense_ms"] == pytest.approx(1e3 * np.median(np.concatenate(dense)), rel=1e-12)
        assert abs(result["speedup"] - np.median(each)) > 0.02  # the old statistic, the median of the rounds, differs


def test_the_dry_run_prints_the_bench_plan_with_its_minutes_and_total():
    *listed, total = subprocess.run([sys.executable, "benchmarks/run_all.py", "--dry-run"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    runs = published.runs("bench")
    assert [line.split("  ")[-1] for line in listed] == [shlex.join([".venv/bin/python", *run.argv()]) for run in runs]
    assert [line.strip().split("  ")[0] for line in listed] == [run.estimate for run in runs]
    assert f"about {sum(run.minutes for run in runs):g} min on 2 cores" in total


def test_every_script_bench_all_runs_with_its_defaults_takes_no_positional_argument(load_script):
    """`make bench-all` runs each script without a results file as it is: a helper module (no main) or a tool that
    needs its arguments would be reported as a failed benchmark."""
    import ast

    run_all = load_script("benchmarks/run_all.py")
    extra = [step for step in run_all.planned(True) if step[3] == "? min"]
    assert extra  # the scripts without a published results file
    for _, (script,), _, _ in extra:
        tree = ast.parse((ROOT / script).read_text())
        positional = [call for call in ast.walk(tree) if isinstance(call, ast.Call)
                      and getattr(call.func, "attr", "") == "add_argument" and call.args
                      and isinstance(call.args[0], ast.Constant) and not str(call.args[0].value).startswith("-")]
        assert not positional, f"{script} needs positional arguments"


def test_a_results_file_records_command_date_code_version_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/example.py", "--runs", "3"])
    json_path, _ = common.write_results("example", {"rows": [1]}, "# example", folder=tmp_path)
    provenance = json.loads(json_path.read_text())["provenance"]
    assert provenance["command"].endswith("benchmarks/example.py --runs 3")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", provenance["date_utc"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the commit, marked dirty where files had changed
        assert provenance["code_version"].split("-")[0] == head.stdout.strip()
    assert provenance["cpu"] == common.cpu_model() and isinstance(provenance["cpu_flags"], list)


def test_a_results_file_cut_short_leaves_the_previous_one_as_it_was(tmp_path, file_size_limit):
    """The scripts that save after every row are stopped from outside (gpu-check's step timeout, Ctrl-C): a
    write cut short raises and leaves the previous results, not half a JSON file that --resume would read."""
    json_path, md_path = common.write_results("example", {"rows": [1]}, "# example", folder=tmp_path)
    before = json_path.read_bytes(), md_path.read_bytes()
    with file_size_limit(len(before[0]) // 2), pytest.raises(OSError):
        common.write_results("example", {"rows": list(range(1000))}, "# example", folder=tmp_path)
    assert (json_path.read_bytes(), md_path.read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["example.json", "example.md"]


@pytest.mark.parametrize("name", ["prune_latency", "tool_speed"])
def test_the_docs_tables_show_no_provenance_record(name):
    """The code version (a commit) stays in the JSON: the docs' generic tables leave `provenance` out."""
    import docs_results
    data = json.loads((RESULTS / f"{name}.json").read_text())
    data["provenance"] = {"code_version": "0123456789abcdef0123456789abcdef01234567", "cpu_flags": ["avx2"]}
    assert "0123456789abcdef" not in docs_results.raw_markdown(name, data)


def test_per_model_numbers_give_every_model_one():
    models = ("resnet20", "mobilenetv2_small", "vit_tiny_fmnist")
    assert common.per_model_numbers(["8", "mobilenetv2_small=4"], models, "--baseline-epochs") == {
        "resnet20": 8, "mobilenetv2_small": 4, "vit_tiny_fmnist": 8}
    for wrong in (["resnet99=3"], ["mobilenetv2_small=4"], ["0"], ["eight"]):
        with pytest.raises(ValueError, match="--baseline-epochs"):
            common.per_model_numbers(wrong, models, "--baseline-epochs")


def test_a_baseline_is_cached_by_its_epochs(tmp_path, monkeypatch):
    """A benchmark asking for 4 epochs never gets the 8-epoch baseline another benchmark cached (before, the cache
    was by model alone, so the figures depended on which benchmark ran first)."""
    import argparse

    import fashion_mnist_accuracy
    import torch

    from prunefx.graph import capture
    from prunefx.models import build_model

    monkeypatch.setattr(fashion_mnist_accuracy, "CACHE", tmp_path)
    folder = tmp_path / "resnet20"
    capture(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4), name="resnet20").save(folder / "dense_8ep.pt2")
    (folder / "dense_8ep.json").write_text(json.dumps({"epochs": 8, "test_accuracy": 0.9}))
    program, info = fashion_mnist_accuracy.baseline("resnet20", None, argparse.Namespace(baseline_epochs=8, seed=0))
    assert info["epochs"] == 8 and tuple(program.run_example().shape) == (1, 2)

    class Trains(Exception):
        pass

    def trains(*args, **kwargs):
        raise Trains

    batched = argparse.Namespace(train=argparse.Namespace(batch_size=1))  # another benchmark's batches
    (folder / "dense_8ep.json").write_text(json.dumps({"epochs": 8}))
    for cached, wanted in ((4, 1), (1, 3)):  # cut out of the graph; captured again with the cached weights
        model = build_model("prunefx:resnet20").module.eval()
        capture(model, torch.randn(cached, 1, 28, 28), name="resnet20").save(folder / "dense_8ep.pt2")
        batched.train.batch_size = wanted
        program, _ = fashion_mnist_accuracy.baseline("resnet20", batched, argparse.Namespace(baseline_epochs=8, seed=0))
        x = torch.randn(wanted, 1, 28, 28)
        torch.testing.assert_close(program.module(x), model(x))
    monkeypatch.setattr(fashion_mnist_accuracy, "capture", trains)  # the first step of training a baseline
    data = argparse.Namespace(train=[(torch.zeros(1, 1, 28, 28), torch.zeros(1))])
    with pytest.raises(Trains):
        fashion_mnist_accuracy.baseline("resnet20", data, argparse.Namespace(baseline_epochs={"resnet20": 4}, seed=0))
