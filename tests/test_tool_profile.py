"""benchmarks/tool_profile.py reads a cProfile run for the time of each stage: a function's cumulative time, or
only the part of it spent under a given caller. The oracle is a profiled toy whose functions sleep for known
times (cProfile's clock counts a sleep)."""

from __future__ import annotations

import cProfile
import importlib
import importlib.util
import pstats
import sys
import textwrap
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

TOY = """
import time

def work(seconds):
    time.sleep(seconds)

def choose():
    work(0.05)

def compensate():
    work(0.15)

def layers():
    for _ in range(2):
        work(0.04)
        yield 1

def resume():  # as saliency's _compute reads its Hessians: next() on a generator
    gathered = layers()
    while next(gathered, None) is not None:
        pass

def run():
    choose()
    compensate()
    resume()
"""


def _benchmark():
    if str(BENCHMARKS) not in sys.path:  # the benchmark imports its siblings `common` and `tool_speed`
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("tool_profile")


def _profiled_toy(tmp_path: Path) -> pstats.Stats:
    source = tmp_path / "graph" / "toy_stages.py"
    source.parent.mkdir()
    source.write_text(textwrap.dedent(TOY))
    spec = importlib.util.spec_from_file_location("toy_stages", source)
    assert spec is not None and spec.loader is not None
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    profiler = cProfile.Profile()
    profiler.runcall(toy.run)
    return pstats.Stats(profiler)


def test_a_stage_is_its_functions_cumulative_time_or_the_part_under_its_caller(tmp_path):
    module = _benchmark()
    stats = _profiled_toy(tmp_path)
    whole = module.stage_seconds(stats, module.Stage("work", "graph/toy_stages.py", "work"))
    under_choice = module.stage_seconds(stats, module.Stage("work in choose", "graph/toy_stages.py", "work", 2,
                                                             ("graph/toy_stages.py", "choose")))
    assert 0.27 <= whole < 0.5
    assert 0.045 <= under_choice < 0.12
    # a generator resumed with next() has the builtin for its caller (the Hessians' stage reads it so)
    resumed = module.stage_seconds(stats, module.Stage("resumed", "graph/toy_stages.py", "layers", 2,
                                                        module.RESUMED_BY_NEXT))
    assert 0.075 <= resumed < 0.15
    assert module.stage_seconds(stats, module.Stage("absent", "graph/toy_stages.py", "never_called")) == 0.0
    # a path must end as given: another file's function of the same name is not this stage
    assert module.stage_seconds(stats, module.Stage("elsewhere", "passes/toy_stages.py", "work")) == 0.0


def test_the_table_lists_parts_under_their_stage_with_their_share():
    module = _benchmark()
    report = {"command": "python benchmarks/tool_profile.py", "threads": 2,
              "machine": {"cpu": "CPU", "avx512": False, "avx2": True, "usable_cpus": 2, "logical_cpus": 2,
                          "python": "3.11", "versions": {"torch": "2", "onnxruntime": "1"}},
              "rows": [{"model": "m", "reference": "timm:m", "wall_s": 10.0, "profiled_s": 9.0,
                        "stages": [{"stage": "channel choice (obs)", "depth": 1, "seconds": 6.0},
                                   {"stage": "elimination", "depth": 2, "seconds": 2.5}]},
                       {"model": "n", "reference": "timm:n", "error": "out of memory"}]}
    text = module.markdown(report)
    assert "| channel choice (obs) | 6.0 | 60% |" in text
    assert "| - elimination | 2.5 | 25% |" in text
    assert "| the whole process under the profiler, start to exit | 10.0 | 100% |" in text
    assert "Failed: out of memory" in text


def test_every_stage_names_a_function_its_file_defines():
    """A stage whose function moved to another file would read 0 s, as a stage that never ran does."""
    module = _benchmark()
    repository = BENCHMARKS.parent
    for stage in module.STAGES:
        for path, function in ((stage.path, stage.function), *((stage.caller,) if stage.caller else ())):
            if path == "~":  # a builtin (next): no file of ours
                continue
            source = (repository / path).read_text()
            assert f"def {function}(" in source, f"{stage.name}: {path} defines no {function}"
