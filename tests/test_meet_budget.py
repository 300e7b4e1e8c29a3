"""prunefx.meet_budget from Python: width, then depth, then both (`allow_depth`), with a typed outcome, and the
one acceptance rule the three searches share (passes/budget/search.Acceptance).

The budget is measured by a stand-in runtime whose latency is the MACs plus a fixed cost per operator:
channel pruning lowers the first only, merging blocks both, so width alone tops out near 1.4x on this model
while depth reaches about 3x. The oracle is the stand-in's own ratio on the Program returned, which the
search never sees as such."""

import importlib
import re
from pathlib import Path

import pytest
import torch

import prunefx
from prunefx.budget import BudgetUnreachable, meet_budget
from prunefx.graph import capture, count
from prunefx.graph.depth.blocks import find_blocks
from prunefx.graph.errors import PrunefxError
from prunefx.models import build_model
from prunefx.passes import depth_to_budget
from prunefx.passes.budget.measurement import Timing
from prunefx.passes.budget.search import CROSS_PROCESS, Acceptance, Measured

pytestmark = pytest.mark.usefixtures("one_thread")
WIDTH = {"importance": "l2", "compensate": False}  # no data-driven selection: fast, and not what is tested here


def stand_in_ms(program) -> float:
    operators = sum(node.op == "call_function" for node in program.graph.nodes)
    return count(program).macs / 1e7 + 0.05 * operators


class PerOperator:
    """A Measurer (passes/budget/measurement.py): stand_in_ms for both models; confirmed the same, as a point."""

    round_to = None

    def __call__(self, dense, candidate):
        return stand_in_ms(dense), stand_in_ms(candidate), 0.0

    def confirm(self, dense, candidate):
        return Timing(*self(dense, candidate))


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    program = capture(build_model("prunefx:mobilenetv2_small").module.eval(), torch.randn(2, 1, 28, 28),
                      name="mobilenetv2_small").eval()
    return program, [torch.randn(2, 1, 28, 28) for _ in range(2)]


@pytest.fixture
def graph_order(mobilenet, monkeypatch):
    """The mergeable blocks in graph order in place of their damage ranking (a minute here; tested in
    test_linearize_blocks.py), for the depth and the joint routes."""
    blocks = [block for block in find_blocks(mobilenet[0].module) if block.affine]
    for module in ("prunefx.passes.depth_to_budget", "prunefx.passes.budget.candidates"):
        monkeypatch.setattr(importlib.import_module(module), "ranked_blocks", lambda *args, **kwargs: (blocks, {}))
    return mobilenet


def test_allow_depth_takes_the_depth_route_after_width_refuses(graph_order):
    program, batches = graph_order
    before = count(program)
    chosen, outcome = meet_budget(program, speedup=2.0, measurer=PerOperator(), calibration=batches,
                                  allow_depth=True, max_candidates=1, width=WIDTH)
    assert outcome.route == "depth" and [refusal.route for refusal in outcome.refusals] == ["width"]
    width = outcome.refusal("width")
    assert width.best.speedup < 2.0 and width.message.startswith("cannot reach a 2x speed-up by width")
    assert stand_in_ms(program) / stand_in_ms(chosen) >= 2.0  # the oracle, on the Program returned
    assert outcome.measured.speedup == pytest.approx(stand_in_ms(program) / stand_in_ms(chosen))
    assert outcome.search["blocks"] and outcome.candidates and outcome.measured.confirmed
    assert outcome.budget_entry()["backend"] == "ort" and outcome.route_entry()["taken"] == "depth"
    assert count(program) == before  # the input is left as it was


@pytest.mark.parametrize("flag, depth", [(["--recalibrate"], {"recalibrate": True}), ([], None),
                                         (["--no-recalibrate"], None)])
def test_prune_recalibrate_given_reaches_the_depth_route(monkeypatch, flag, depth):
    """`prune --allow-depth --recalibrate`: the depth route re-estimates the batch norms inside the merged blocks, as
    `prunefx depth --recalibrate` does; without the flag it keeps depth's own default."""
    from prunefx.cli import build_parser
    prune_budget = importlib.import_module("prunefx.cli.prune_budget")
    asked = {}
    monkeypatch.setattr(prune_budget, "meet_budget", lambda program, **kwargs: (asked.update(kwargs), (None, None))[1])
    args = build_parser(["prune"]).parse_args(["prune", "m.pt2", "--speedup", "1.5", "--allow-depth", "--calibrate",
                                               "imagenet-sample", *flag, "-o", "out"])
    prune_budget.meet_for_command_line(args, None, None, {}, None, measurer=PerOperator())
    assert asked["depth"] == depth


@pytest.mark.parametrize("options, said", [
    ({"width": {"confirm": False}}, "'confirm' is an argument of meet_budget, not an option in 'width'"),
    ({"depth": {"tolerance": 0.5}}, "'tolerance' is an argument of meet_budget, not an option in 'depth'"),
])
def test_a_route_option_that_meet_budget_sets_itself_is_refused(mobilenet, options, said):
    """The routes set these from meet_budget's own arguments: given in `width`/`depth`, they were overridden silently."""
    program, batches = mobilenet
    with pytest.raises(PrunefxError, match=said):
        meet_budget(program, speedup=2.0, measurer=PerOperator(), calibration=batches, allow_depth=True, **options)


def test_a_measurement_setting_the_backend_does_not_read_is_refused():
    from prunefx.runtime.measure.pairs import Measurement

    for setting in ({"compile": True}, {"trtexec": "/usr/bin/trtexec"}):  # the report would say it measured so
        with pytest.raises(PrunefxError, match="the ort backend does not read"):
            Measurement.of("ort", threads=1, runs=5, **setting)


def test_the_depth_route_delivers_the_merge_it_measured_without_merging_again(graph_order, monkeypatch):
    program, batches = graph_order
    merging = importlib.import_module("prunefx.passes.merge_blocks")
    merged = []
    monkeypatch.setattr(merging, "_merge_all", lambda program, config, real=merging._merge_all: (
        merged.append(program.name), real(program, config))[1])
    chosen, outcome = meet_budget(program, speedup=2.0, measurer=PerOperator(), calibration=batches,
                                  allow_depth=True, max_candidates=1, width=WIDTH)
    assert outcome.route == "depth" and len(merged) == len(outcome.search["trace"]) >= 1
    assert stand_in_ms(program) / stand_in_ms(chosen) == pytest.approx(outcome.measured.speedup)


def test_width_and_depth_together_land_between_whole_block_steps(graph_order):
    """With a 2 % window, depth's fewest blocks that meet 2.5x overshoot it; the mix merges blocks up to
    just under the budget and width closes the rest, below depth's overshooting step (within 4 candidates
    the width search may end a little above the window: its own rule, tested in test_prune_to_budget.py)."""
    program, batches = graph_order
    chosen, outcome = meet_budget(program, speedup=2.5, measurer=PerOperator(), calibration=batches,
                                  allow_depth=True, tolerance=0.02, max_candidates=4, width=WIDTH)
    assert outcome.route == "width+depth" and [r.route for r in outcome.refusals] == ["width", "depth"]
    assert outcome.refusal("depth").overshot and outcome.refusal("depth").best.speedup > 2.5 * 1.02
    delivered = stand_in_ms(program) / stand_in_ms(chosen)
    assert 2.5 <= delivered < outcome.refusal("depth").best.speedup
    assert outcome.measured.speedup == pytest.approx(delivered)
    assert outcome.depth_share is not None and outcome.search["depth_speedup"] < 2.5


def test_a_budget_no_route_reaches_raises_one_line_with_each_best(graph_order):
    program, batches = graph_order
    with pytest.raises(BudgetUnreachable) as caught:
        meet_budget(program, speedup=8.0, measurer=PerOperator(), calibration=batches, allow_depth=True,
                    max_candidates=1, width=WIDTH)
    message = str(caught.value)
    assert caught.value.dimension == "width+depth" and "\n" not in message
    assert message.startswith("cannot reach a 8x speed-up: width's best was 1.") and "depth's best 3." in message
    assert "and together (depth aiming at its share of the budget, width at the rest): cannot reach a 8x speed-up with any mix of width, depth" in message


def test_a_refusal_after_every_route_says_when_width_was_refused_by_the_noise():
    """MobileNetV3-L at 3x on a noisy machine: width's best read 3.45x on 2.75-4.33 (refused: the interval, not the
    point, missed), depth and the mix fell short. The one line must still say that a quieter run may land it, as
    width's own refusal does, and the mix's derived share reads as 1.732x, not 1.73205x."""
    from prunefx.budget.meet import _Routes
    from prunefx.budget.outcome import RouteRefusal
    from prunefx.budget.routes import Budget
    from prunefx.passes.budget.search import budget_text, noise_text

    wide = Measured(Timing(1.0, 1 / 3.45, 0.02, 2.75, 4.33, 0.92, "t over 4 fresh processes"), first=Timing(1.0, 0.3, 0.02))
    short = Measured(Timing(1.0, 1 / 1.15, 0.02, 1.1, 1.2, 0.9, "t over 4 fresh processes"), first=Timing(1.0, 0.87, 0.02))
    assert noise_text(wide, 3.0) and not noise_text(short, 3.0)  # the oracle of `noisy`: the searches' own text
    errors = [BudgetUnreachable("width refused", dimension="width", best=wide, noisy=True),
              BudgetUnreachable("depth refused", dimension="depth", best=short),
              BudgetUnreachable(f"cannot reach {budget_text(3 ** 0.5, None)} by depth", dimension="width+depth", best=short)]
    routes = _Routes.__new__(_Routes)  # the refusals alone: no search runs here
    routes.budget = Budget(3.0, None, 0.15, True, 8)
    routes.errors, routes.refusals = errors, [RouteRefusal.of(r, e) for r, e in zip(("width", "depth", "width+depth"), errors)]
    final = routes._final_refusal()
    assert final.noisy and "\n" not in str(final)
    assert str(final).endswith("cannot reach a 1.732x speed-up by depth; width's best interval held the budget, so the "
                               "timing was too noisy to decide: run it again with nothing else running")
    routes.refusals[0] = RouteRefusal.of("width", BudgetUnreachable("width refused", dimension="width", best=short))
    quiet = routes._final_refusal()
    assert not quiet.noisy and "too noisy" not in str(quiet)


def test_without_allow_depth_width_refuses_alone(mobilenet):
    program, _ = mobilenet
    with pytest.raises(BudgetUnreachable) as caught:
        meet_budget(program, speedup=2.0, measurer=PerOperator(), max_candidates=1, width=WIDTH)
    assert caught.value.dimension == "width" and caught.value.best.speedup < 2.0


@pytest.mark.parametrize("options, said", [
    ({"speedup": 2.0, "allow_depth": True}, "give meet_budget calibration"),
    ({"speedup": 2.0, "latency_ms": 1.0}, "exactly one budget"),
    ({"speedup": 2.0, "routes": ("depth", "width")}, "routes must list some of width, depth, width+depth"),
])
def test_bad_requests_are_refused_before_anything_is_measured(mobilenet, options, said):
    def never(dense, candidate):
        raise AssertionError("measured")

    with pytest.raises(PrunefxError, match=re.escape(said)):
        meet_budget(mobilenet[0], measurer=never, **options)


@pytest.mark.parametrize("options, said", [
    ({"threads": 0}, "threads must be an integer >= 1, not 0"),  # was read as the default
    ({"threads": True}, "threads must be an integer >= 1, not True"),  # was read as 1
    ({"runs": 2.5}, "runs must be an integer >= 1, not 2.5"),  # was a TypeError from the timing loop
])
def test_measurement_counts_are_refused_before_the_search(mobilenet, options, said):
    with pytest.raises(PrunefxError, match=re.escape(said)):
        meet_budget(mobilenet[0], speedup=2.0, **options)


def test_the_acceptance_rule_is_one_and_depth_takes_its_fallback(graph_order):
    """The floor: a confirmed point below S x 1.05 does not meet the rule, whatever its bound. Depth moves in
    whole blocks, so it accepts the fewest blocks whose bound clears S (the rule's fallback, which width
    takes only when no width lands above the floor): a budget 2 % below a block count's speed-up is met by
    exactly that count, which the width search's rule would not accept."""
    program, batches = graph_order
    rule = Acceptance(2.0, None, 0.15)
    assert rule.floor == CROSS_PROCESS and not rule.meets(Measured(Timing(2.06, 1.0, 0.0, 2.06, 2.06), Timing(2.06, 1.0, 0.0)))
    assert rule.meets(Measured(Timing(2.2, 1.0, 0.0, 2.1, 2.3), Timing(2.2, 1.0, 0.0)))
    assert not rule.in_window(Measured.of((2.4, 1.0, 0.0)))
    assert Acceptance(2.0, None, 0.04).floor == pytest.approx(1.04 ** 0.5)  # a window narrower than the floor
    config = {"speedup": 1.5, "latency": PerOperator(), "calibration": batches, "tolerance": None}
    trace = depth_to_budget(program.clone(), config=config).stats["trace"]
    row = max((row for row in trace if row["n"] > 1), key=lambda row: row["speedup"])
    budget = row["speedup"] / 1.02
    stats = depth_to_budget(program.clone(), config={**config, "speedup": budget, "tolerance": 0.15}).stats
    chosen = Measured.from_dict(stats["chosen"])
    assert stats["speedup"] == pytest.approx(row["speedup"]) and len(stats["blocks"]) == row["n"]
    assert Acceptance(budget, None, 0.15).bound_clears(chosen) and not Acceptance(budget, None, 0.15).meets(chosen)


def test_the_python_api_guide_example_runs(graph_order, monkeypatch, capsys):
    """docs/python-api.md's example as written, its ONNX Runtime measurement replaced by the stand-in."""
    monkeypatch.setattr(importlib.import_module("prunefx.runtime.measure.pairs").Measurement, "pair",
                        lambda self: PerOperator())
    guide = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text()
    block = re.search(r"## Meet a measured budget\n.*?```python\n(.*?)```", guide, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(block, "python-api.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    outcome = namespace["outcome"]
    assert printed[0] == f"{outcome.route} {outcome.measured.speedup:.2f}x" and outcome.route == "depth"
    assert printed[1].startswith("width cannot reach a 2x speed-up by width")
    assert stand_in_ms(namespace["program"]) / stand_in_ms(namespace["faster"]) >= 2.0
    assert prunefx.meet_budget is meet_budget


def test_a_refused_budget_leaves_none_of_its_measurement_files(tmp_path, monkeypatch):
    """The ONNX files the measurer meet_budget made exported are gone when BudgetUnreachable reaches the caller,
    not at the next garbage collection (the error's traceback holds the measurer)."""
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    program = capture(model, torch.randn(1, 3, 8, 8), name="tiny")
    gc.disable()  # no collection may remove them in the test's place
    try:
        with pytest.raises(BudgetUnreachable):
            meet_budget(program, speedup=50.0, runs=3, threads=1, max_candidates=1, width=WIDTH)
        left = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("prunefx"))  # not torch's
    finally:
        gc.enable()
    assert left == []


def test_the_width_and_depth_route_searches_depth_with_the_depth_options_given(monkeypatch):
    """meet_budget(depth={...}) reached the depth route alone; taking both, the depth search used its defaults."""
    routes = importlib.import_module("prunefx.budget.routes")
    given = {}

    class Chosen(Exception):
        pass

    def choice(settings, steps):
        given.update(settings.depth)
        raise Chosen

    monkeypatch.setattr(routes, "budget_choice", choice)
    monkeypatch.setattr(routes, "candidate_steps", lambda program, settings: None)
    monkeypatch.setattr(routes, "measured_by", lambda measurer, steps: steps)
    budget = routes.Budget(speedup=1.5, latency_ms=None, tolerance=0.1, confirm=False, max_candidates=2)
    program = capture(build_model("prunefx:resnet20").module.eval(), torch.randn(1, 1, 28, 28))
    depth = {"rank": "damage_per_mac", "max_kernel_growth": 3.0, "layer_norms": None}
    with pytest.raises(Chosen):
        routes.joint(program, budget, None, {}, None, False, None, depth)
    assert given == {"rank": "damage_per_mac", "max_kernel_growth": 3.0}  # the unset ones left to their defaults


class _StampedPerOperator(PerOperator):
    """PerOperator as a backend's measurer reads: stamped with the backend and settings it measures with."""

    def __init__(self, settings):
        self.measured_as = ("ort", settings)


def test_a_backends_measurer_states_its_own_settings_in_the_outcome_not_meet_budgets_defaults(mobilenet):
    from prunefx.runtime.backends.base import Settings

    program, batches = mobilenet
    measurer = _StampedPerOperator(Settings(runs=7, threads=1, precision="fp32", batch=2))
    _, outcome = meet_budget(program, speedup=1.1, measurer=measurer, calibration=batches, width=WIDTH)
    assert (outcome.measured_on.backend, outcome.measured_on.runs, outcome.measured_on.batch) == ("ort", 7, 2)


@pytest.mark.parametrize("backend", ["ort", "cuda", "trt", "trtexec", "torch-trt"])
def test_every_backends_measurer_is_stamped_with_what_it_was_made_with(backend, monkeypatch):
    from prunefx.runtime import backends
    from prunefx.runtime.backends.base import Settings

    chosen = backends.get(backend, budgets=True)
    settings = Settings(runs=7, threads=1, precision=chosen.default_precision, batch=3, trtexec="trtexec")
    monkeypatch.setattr("prunefx.runtime.backends.trtexec.find_trtexec", lambda given: given, raising=False)
    assert chosen.latency_pair(settings).measured_as == (chosen.name, settings)
