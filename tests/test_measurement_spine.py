"""The measurement spine: what a `--speedup` budget passes through from the command line to the backend's timer.

The oracle is the interpreter's own call stack, read inside a stand-in for the timing loop every ONNX Runtime
measurement ends in: the repository files on it, outermost first. The layer order (prunefx -> runtime -> passes
-> graph, docs/design.md) says each file may call only its own layer or one below."""

import traceback
from pathlib import Path

import pytest
import torch

from prunefx.budget import meet_budget
from prunefx.cli import main
from prunefx.data import fashion_mnist
from prunefx.graph import capture, count
from prunefx.graph.errors import PrunefxError
from prunefx.graph.timing import Timing
from prunefx.models import build_model
from prunefx.runtime.measure import latency, timing_loop

REPOSITORY = Path(__file__).resolve().parents[1]
LAYERS = {"prunefx": 3, "runtime": 2, "passes": 1, "graph": 0}  # higher calls lower
MOST_FILES = 12


def repository_files(stack: traceback.StackSummary) -> list[str]:
    """The library's files on `stack`, outermost first, each once per run of frames in it."""
    files: list[str] = []
    for frame in stack:
        path = Path(frame.filename).resolve()
        if not path.is_relative_to(REPOSITORY) or path.parts[len(REPOSITORY.parts)] not in LAYERS:
            continue
        relative = path.relative_to(REPOSITORY).as_posix()
        if not files or files[-1] != relative:
            files.append(relative)
    return files


@pytest.fixture
def stacks(monkeypatch) -> list[list[str]]:
    """The library's files on the stack at every timing loop (the real loop then times as it would)."""
    seen: list[list[str]] = []
    real = timing_loop.alternate

    def recording(*args, **kwargs):
        seen.append(repository_files(traceback.extract_stack()[:-1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "alternate", recording)  # where the measurers call it
    return seen


def assert_downward_through_few_files(stacks: list[list[str]]) -> None:
    assert stacks  # met or not, candidates were timed
    for files in stacks:
        assert files[0].startswith("prunefx/cli/") and len(set(files)) <= MOST_FILES, files
        layers = [LAYERS[name.split("/")[0]] for name in files]
        upward = [(a, b) for a, b, la, lb in zip(files, files[1:], layers, layers[1:]) if lb > la]
        assert not upward, f"calls up the layers: {upward}"


def test_a_speedup_budget_reaches_the_timer_through_at_most_twelve_files_each_calling_downward(stacks, tmp_path,
                                                                                               one_thread):
    code = main(["prune", "prunefx:resnet20", "--input-shape", "1x1x32x32", "--speedup", "1.2", "--runs", "3",
                 "--max-candidates", "2", "--threads", "1", "--no-confirm", "--importance", "l2",
                 "-o", str(tmp_path / "out")])
    assert code in (0, 2)
    assert_downward_through_few_files(stacks)


@pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST missing")
def test_a_depth_budget_reaches_the_timer_the_same_way(stacks, tmp_path, one_thread):
    """The depth route (blocks linearised and merged) asks for its measurements as the width route does."""
    code = main(["depth", "prunefx:resnet20", "--input-shape", "1x1x28x28", "--speedup", "1.1", "--runs", "3",
                 "--threads", "1", "--no-confirm", "--calibrate", "fashion-mnist", "--calibration-images", "4",
                 "-o", str(tmp_path / "out")])
    assert code in (0, 2)
    assert_downward_through_few_files(stacks)


def test_the_spine_check_sees_a_call_up_the_layers():
    """The check itself: a stack that goes passes -> runtime is read as a call up."""
    stack = traceback.StackSummary.from_list([
        (str(REPOSITORY / "prunefx/budget/routes.py"), 1, "width", ""),
        (str(REPOSITORY / "passes/budget/width_search.py"), 1, "steps", ""),
        (str(REPOSITORY / "runtime/measure/latency.py"), 1, "compare_latency", ""),
    ])
    files = repository_files(stack)
    layers = [LAYERS[name.split("/")[0]] for name in files]
    assert files == ["prunefx/budget/routes.py", "passes/budget/width_search.py", "runtime/measure/latency.py"]
    assert any(b > a for a, b in zip(layers, layers[1:]))


class MacsTimer:
    """A stand-in measurer whose milliseconds are the MACs; every Timing it answers is kept."""

    round_to = None

    def __init__(self):
        self.answered: list[Timing] = []

    def __call__(self, dense, candidate) -> Timing:
        return self._answer(Timing(count(dense).macs / 1e6, count(candidate).macs / 1e6, 0.01))

    def confirm(self, dense, candidate) -> Timing:
        point = count(dense).macs / count(candidate).macs
        return self._answer(Timing(count(dense).macs / 1e6, count(candidate).macs / 1e6, 0.01, 0.99 * point,
                                   1.01 * point, 0.9, "stand-in"))

    def _answer(self, timing: Timing) -> Timing:
        self.answered.append(timing)
        return timing


def test_the_timers_timing_reaches_the_outcome_unchanged(one_thread):
    """One timing type: the Timing object the measurer answered is the one the outcome holds, not a copy."""
    torch.manual_seed(0)
    program = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28)).eval()
    timer = MacsTimer()
    _, outcome = meet_budget(program, speedup=1.6, measurer=timer, width={"importance": "l2"})
    assert outcome.measured.timing is timer.answered[-1] and outcome.measured.timing.method == "stand-in"
    assert outcome.measured.first is not None and any(outcome.measured.first is t for t in timer.answered)


class StackRecordingTimer(MacsTimer):
    """MacsTimer that also keeps the library's files on the stack at every measurement."""

    def __init__(self):
        super().__init__()
        self.stacks: list[list[str]] = []

    def _answer(self, timing: Timing) -> Timing:
        self.stacks.append(repository_files(traceback.extract_stack()[:-2]))
        return super()._answer(timing)


@pytest.mark.parametrize("route", ["width", "depth", "width+depth"])
def test_every_route_measures_from_its_own_frame_never_from_a_pass(route, one_thread):
    """The measurer is called by prunefx/budget/routes.py itself: no pass is on the stack below it, for each route
    (the depth and width+depth searches ask as the width search does)."""
    torch.manual_seed(0)
    program = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28)).eval()
    batches = [torch.randn(1, 1, 28, 28) for _ in range(4)]
    timer = StackRecordingTimer()
    try:
        meet_budget(program, speedup=1.3, measurer=timer, calibration=batches, routes=(route,),
                    width={"importance": "l2"}, max_candidates=3)
    except PrunefxError:
        pass  # met or not: the measurements taken are what this test reads
    assert timer.stacks
    for files in timer.stacks:
        assert files[-1] == "prunefx/budget/routes.py", files
        assert not [name for name in files if name.startswith("passes/")], files
